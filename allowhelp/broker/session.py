"""One help session's lifecycle, as a plain state machine without I/O.

    requested ─▶ awaiting_consent ─▶ active ─▶ ended
                      │  │
                      │  └─▶ denied     (the user clicked Deny)
                      └────▶ expired    (no answer before the consent timeout)

``transition`` is the only way to change state; it refuses illegal moves and
returns the audit event that must be committed *before* the caller lets the
new state take effect (the registry does that).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from allowhelp.protocol.control import EndReason, Kind

from .phrase import verification_phrase


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


class IllegalTransition(RuntimeError):
    """A move the lifecycle does not allow, e.g. ended → active. A bug, or a race lost."""


@dataclass(frozen=True)
class AuditEvent:
    type: str
    actor: str
    target: str
    details: Mapping[str, object]


ID_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_session_id() -> str:
    """16 letters and digits (~93 bits): never starts with "-", so it can be
    typed as a command-line argument, and no 0/O or 1/l to misread."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(16))


@dataclass
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
    ) -> Session:
        session_id = new_session_id()
        return cls(
            id=session_id,
            agent_id=agent_id,
            hostname=hostname,
            technician=technician,
            technician_name=technician_name,
            kind=kind,
            reason=reason,
            phrase=verification_phrase(),
            help_code=help_code,
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
    ) -> tuple[Session, AuditEvent]:
        """Return the session as it will be after the move, and the event to audit.

        The session itself is not changed: the caller commits the audit event
        first and only then adopts the new value, so a failed audit write
        leaves the session exactly as it was.
        """
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"session {self.id}: {self.state.value} → {new.value}")
        if new is State.ENDED and reason is None:
            raise IllegalTransition(f"session {self.id}: ending needs a reason")
        now = time.time() if now is None else now
        after = replace(self, state=new)
        if new in (State.ACTIVE, State.DENIED, State.EXPIRED):
            after.decided = now
        if new is State.ACTIVE:
            after.started = now
        if new in FINAL:
            after.ended = now
            after.end_reason = reason or new.value
        event = AuditEvent(
            type=EVENT_FOR[new],
            actor=actor,
            target=self.id,
            details={**self.summary(), **(details or {}), **after.timing(new, reason)},
        )
        return after, event

    def summary(self) -> dict[str, object]:
        return {
            "session": self.id,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "technician": self.technician,
            "kind": self.kind,
            "reason": self.reason,
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
        }
