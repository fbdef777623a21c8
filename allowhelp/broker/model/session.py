"""One help session's lifecycle, as a plain state machine without I/O.

    requested ─▶ awaiting_consent ─▶ active ─▶ ended
                      │  │
                      │  └─▶ denied     (the user clicked Deny)
                      └────▶ expired    (no answer before the consent timeout)

``Session`` is frozen. ``transition`` is the only way to change one: it
refuses illegal moves and returns the session as it will be and the audit
event that must be committed *before* the caller adopts it (the session
registry does that). What a consent decision grants (view-only) and what the
relays counted (bytes, the recording's digest) enter the session through the
transition that records them, never before.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from allowhelp.broker.errors import IllegalTransition
from allowhelp.broker.model.phrase import verification_phrase
from allowhelp.protocol.kinds import EndReason, Kind


class State(StrEnum):
    REQUESTED = "requested"
    AWAITING_CONSENT = "awaiting_consent"
    ACTIVE = "active"
    ENDED = "ended"
    DENIED = "denied"
    EXPIRED = "expired"


FINAL = frozenset({State.ENDED, State.DENIED, State.EXPIRED})

ALLOWED: Mapping[State, frozenset[State]] = {
    # A request can fail before the prompt is shown (agent offline, audit down).
    State.REQUESTED: frozenset({State.AWAITING_CONSENT, State.ENDED}),
    # Cancelled by the technician or lost agent while waiting: ended.
    State.AWAITING_CONSENT: frozenset({State.ACTIVE, State.DENIED, State.EXPIRED, State.ENDED}),
    State.ACTIVE: frozenset({State.ENDED}),
    State.ENDED: frozenset(),
    State.DENIED: frozenset(),
    State.EXPIRED: frozenset(),
}

EVENT_FOR: Mapping[State, str] = {
    State.AWAITING_CONSENT: "consent.asked",
    State.ACTIVE: "consent.granted",
    State.DENIED: "consent.denied",
    State.EXPIRED: "consent.expired",
    State.ENDED: "session.ended",
}


@dataclass(frozen=True)
class Traffic:
    """What the relays of a session report when they stop: bytes and recording."""

    to_agent: int = 0
    from_agent: int = 0
    recording: str | None = None
    recording_sha256: str | None = None

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.to_agent + other.to_agent,
            self.from_agent + other.from_agent,
            other.recording or self.recording,
            other.recording_sha256 or self.recording_sha256,
        )


@dataclass(frozen=True)
class AuditEvent:
    type: str
    actor: str
    target: str
    details: Mapping[str, object]


ID_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def user_actor(agent_id: str) -> str:
    """The person at a PC, as the audit names them: by the machine's enrolled id
    (its reported host name is the agent's own words and may change)."""
    return f"user@{agent_id}"


def new_session_id() -> str:
    """16 letters and digits (~93 bits): never starts with "-", so it can be
    typed as a command-line argument, and no 0/O or 1/l to misread."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(16))


@dataclass(frozen=True)
class Session:
    id: str
    agent_id: str
    hostname: str
    technician: str
    technician_name: str
    kind: Kind
    reason: str
    phrase: str
    help_code: str = ""
    state: State = State.REQUESTED
    view_only: bool = False
    created: float = field(default_factory=time.time)
    decided: float | None = None
    started: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    bytes_to_agent: int = 0
    bytes_from_agent: int = 0
    recording: str | None = None
    recording_sha256: str | None = None
    ticket: str = ""  # the help desk's ticket (free text, e.g. HD-1234)
    notes: str = ""  # the technician's notes, changed by PATCH
    # A screen: the monitor asked for (protocol/monitors.py; "" the default). Sent in
    # the consent request and audited with session.requested; not stored in the row.
    monitor: str = ""

    @classmethod
    def new(
        cls,
        *,
        agent_id: str,
        hostname: str,
        technician: str,
        technician_name: str,
        kind: Kind,
        reason: str,
        help_code: str = "",
        language: str = "en",
        ticket: str = "",
        monitor: str = "",
        view_only: bool = False,
    ) -> Session:
        """``language``: the PC user's, from the agent's Hello; the phrase's words.
        ``view_only``: a files session asked for as view only (read-only SFTP)."""
        session_id = new_session_id()
        return cls(
            id=session_id,
            agent_id=agent_id,
            hostname=hostname,
            technician=technician,
            technician_name=technician_name,
            kind=kind,
            reason=reason,
            phrase=verification_phrase(language=language),
            help_code=help_code,
            ticket=ticket,
            monitor=monitor,
            view_only=view_only,
        )

    @property
    def traffic(self) -> Traffic:
        return Traffic(
            self.bytes_to_agent, self.bytes_from_agent, self.recording, self.recording_sha256
        )

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def transition(
        self,
        new: State,
        *,
        actor: str,
        now: float | None = None,
        reason: EndReason | None = None,
        details: Mapping[str, object] | None = None,
        view_only: bool = False,
        traffic: Traffic | None = None,
    ) -> tuple[Session, AuditEvent]:
        """Return the session as it will be after the move, and the event to audit.

        ``view_only`` is what a grant (→ active) allows; ``traffic`` is what the
        relays counted, folded in by the end (→ ended). The session itself is
        not changed: the caller commits the audit event first and only then
        adopts the new value, so a failed audit write leaves everything as it was.
        """
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"session {self.id}: {self.state.value} → {new.value}")
        if new is State.ENDED and reason is None:
            raise IllegalTransition(f"session {self.id}: ending needs a reason")
        if view_only and new is not State.ACTIVE:
            raise IllegalTransition(f"session {self.id}: only a grant can be view-only")
        now = time.time() if now is None else now
        after = replace(self, state=new, **self._stamps(new, now, reason, view_only, traffic))
        event = AuditEvent(
            type=EVENT_FOR[new],
            actor=actor,
            target=self.id,
            details={**self.summary(), **(details or {}), **after.timing(new, reason)},
        )
        return after, event

    def _stamps(
        self,
        new: State,
        now: float,
        reason: EndReason | None,
        view_only: bool,
        traffic: Traffic | None,
    ) -> dict[str, Any]:
        """The fields a move to ``new`` sets, besides the state."""
        changes: dict[str, Any] = {}
        if new in (State.ACTIVE, State.DENIED, State.EXPIRED):
            changes["decided"] = now
        if new is State.ACTIVE:
            changes["started"] = now
            changes["view_only"] = view_only
        if new in FINAL:
            changes["ended"] = now
            changes["end_reason"] = reason or new.value
        if traffic is not None:
            total = self.traffic + traffic
            changes["bytes_to_agent"] = total.to_agent
            changes["bytes_from_agent"] = total.from_agent
            changes["recording"] = total.recording
            changes["recording_sha256"] = total.recording_sha256
        return changes

    def actor_for(self, reason: EndReason) -> str:
        """Who ended the session, for the audit, by why it ended: the one rule."""
        if reason == "technician":
            return f"technician:{self.technician}"
        if reason == "user":
            return user_actor(self.agent_id)
        return "system"

    def summary(self) -> dict[str, object]:
        return {
            "session": self.id,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "technician": self.technician,
            "kind": self.kind,
            "reason": self.reason,
            **({"read_only": True} if self.kind == "files" and self.view_only else {}),
        }

    def timing(self, new: State, reason: EndReason | None) -> dict[str, object]:
        if new is not State.ENDED:
            return {}
        duration = (self.ended or 0) - self.started if self.started else 0.0
        return {
            "end_reason": reason,
            "duration_seconds": round(duration, 3),
            "bytes_to_agent": self.bytes_to_agent,
            "bytes_from_agent": self.bytes_from_agent,
            "recording_sha256": self.recording_sha256,
        }

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "technician": self.technician,
            "technician_name": self.technician_name,
            "kind": self.kind,
            "reason": self.reason,
            "phrase": self.phrase,
            "help_code": self.help_code,
            "state": self.state.value,
            "view_only": self.view_only,
            "created": self.created,
            "decided": self.decided,
            "started": self.started,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "bytes_to_agent": self.bytes_to_agent,
            "bytes_from_agent": self.bytes_from_agent,
            "ticket": self.ticket,
            "notes": self.notes,
        }
