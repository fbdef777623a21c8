"""The session registry: every help session, its consent and its end, audited first.

All state changes go through ``_move``: the state machine computes the next
state and its audit event, the event is committed, and only then does the new
state take effect (stored, published, acted on). If the audit write fails the
session stays as it was and the action is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping

from allowhelp.protocol.control import (
    KINDS,
    ConsentDecision,
    ConsentRequest,
    EndReason,
    Hello,
    HelpRequest,
    Kind,
    Message,
    SessionEnd,
)
from allowhelp.protocol.text import plain_text

from .audit import AuditLog
from .errors import BrokerError, TunnelError
from .events import EventHub
from .help import HelpDesk, format_code, normalise_code
from .registry import AgentRegistry
from .relay import RelayStats
from .session import IllegalTransition, Session, State
from .store import Store

log = logging.getLogger(__name__)

MAX_REASON = 500
Stopper = Callable[[], RelayStats]


class SessionError(BrokerError):
    """A session request or action refused; ``status`` and ``code`` go to the API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def clean_reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise SessionError(400, "bad_request", "reason must be a string")
    kept = plain_text(reason, MAX_REASON + 1)
    if not kept:
        raise SessionError(400, "bad_request", "say why you need access (reason)")
    if len(kept) > MAX_REASON:
        raise SessionError(400, "bad_request", f"the reason is longer than {MAX_REASON} characters")
    return kept


class SessionRegistry:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        agents: AgentRegistry,
        events: EventHub,
        help_desk: HelpDesk,
        *,
        organisation: str,
        consent_timeout: float,
    ) -> None:
        self._store = store
        self._audit = audit
        self._agents = agents
        self._events = events
        self._help = help_desk
        self._organisation = organisation
        self._timeout = consent_timeout
        self._live: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._relays: dict[str, list[Stopper]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        agents.subscribe(self._agent_changed)

    # lookups

    def get(self, session_id: str) -> Session | None:
        return self._live.get(session_id) or self._store.session(session_id)

    def listed(self, username: str, is_admin: bool, limit: int = 200) -> list[Session]:
        stored = self._store.sessions(None if is_admin else username, limit)
        live = {s.id: s for s in self._live.values() if is_admin or s.technician == username}
        merged = {s.id: s for s in stored} | live
        return sorted(merged.values(), key=lambda s: s.created, reverse=True)[:limit]

    # the technician's side

    async def request(
        self,
        *,
        technician: str,
        technician_name: str,
        agent_id: str,
        kind: str,
        reason: object,
        help_code: str = "",
    ) -> Session:
        if kind not in KINDS:
            raise SessionError(400, "bad_request", 'kind must be "shell" or "screen"')
        text = clean_reason(reason)
        agent = self._store.agent(agent_id) if isinstance(agent_id, str) else None
        if agent is None or agent.removed:
            raise SessionError(404, "no_such_agent", "no such machine")
        if help_code:
            if not self._help.belongs(help_code, agent_id):
                raise SessionError(400, "bad_help_code", "that help code is not from this machine")
            help_code = format_code(normalise_code(help_code))
        typed_kind: Kind = "shell" if kind == "shell" else "screen"
        session = Session.new(
            agent_id=agent_id,
            hostname=agent.hostname,
            technician=technician,
            technician_name=technician_name,
            kind=typed_kind,
            reason=text,
            help_code=help_code,
        )
        await self._audit.write(
            "session.requested",
            actor=f"technician:{technician}",
            target=session.id,
            details={**session.summary(), "phrase": session.phrase, "help_code": help_code},
        )
        self._live[session.id] = session
        self._store.save_session(session)
        self._publish(session)
        await self._ask(session)
        return self.get(session.id) or session

    async def _ask(self, session: Session) -> None:
        live = self._agents.get(session.agent_id)
        if live is None:
            await self._move(
                session.id,
                State.ENDED,
                actor="system",
                reason="error",
                details={"error": "the machine is offline"},
            )
            raise SessionError(409, "agent_offline", "the machine is offline")
        request = ConsentRequest(
            session_id=session.id,
            organisation=self._organisation,
            technician=session.technician_name,
            kind=session.kind,
            reason=session.reason,
            phrase=session.phrase,
            timeout=self._timeout,
            help_code=session.help_code,
        )
        await self._move(
            session.id,
            State.AWAITING_CONSENT,
            actor="system",
            details={"asked": request.encode().decode().strip()},
        )
        try:
            await asyncio.wait_for(live.link.ready.wait(), 10)
            live.link.send(request)
        except (TunnelError, TimeoutError) as exc:
            await self._move(
                session.id,
                State.ENDED,
                actor="system",
                reason="error",
                details={"error": str(exc) or "no control channel"},
            )
            raise SessionError(
                502, "agent_unreachable", "the machine did not take the request"
            ) from exc
        if session.help_code:
            self._help.used(session.help_code, session.id)
        loop = asyncio.get_running_loop()
        self._timers[session.id] = loop.call_later(
            self._timeout, lambda: self._spawn(self._expire(session.id))
        )

    async def end(self, session_id: str, *, reason: EndReason, actor: str) -> Session:
        session = await self._move(session_id, State.ENDED, actor=actor, reason=reason)
        if reason not in ("user", "agent_lost"):
            self._tell_agent(session, SessionEnd(session_id=session_id, reason=reason))
        return session

    async def end_quietly(self, session_id: str, *, reason: EndReason, actor: str) -> None:
        """End unless already over (a relay and the user may both end it at once)."""
        session = self.get(session_id)
        if session is not None and not session.final:
            with contextlib.suppress(IllegalTransition):
                await self.end(session_id, reason=reason, actor=actor)

    def attach_relay(self, session_id: str, stop: Stopper) -> None:
        """A relay serves this session; ending the session stops it first, so the
        end record carries its byte counts and the recording's digest."""
        self._relays.setdefault(session_id, []).append(stop)

    def has_relay(self, session_id: str) -> bool:
        return bool(self._relays.get(session_id))

    async def audit_started(self, session: Session, details: dict[str, object]) -> None:
        await self._audit.write(
            "session.started",
            actor=f"technician:{session.technician}",
            target=session.id,
            details={**session.summary(), **details},
        )

    # the agent's side

    async def on_agent_message(self, agent_id: str, message: Message) -> None:
        if isinstance(message, ConsentDecision):
            await self._decided(agent_id, message)
        elif isinstance(message, SessionEnd):
            session = self._live.get(message.session_id)
            if session is None or session.agent_id != agent_id:
                log.warning("agent=%s ended a session that is not its own", agent_id)
                return
            await self.end_quietly(message.session_id, reason="user", actor=f"user@{agent_id}")
        elif isinstance(message, HelpRequest):
            await self._help.request(agent_id, message, self._agents.get(agent_id))
        elif isinstance(message, Hello):
            self._store.update_agent_info(
                agent_id,
                hostname=plain_text(message.hostname, 253) or "(unnamed)",
                os=plain_text(message.os, 200),
                user=plain_text(message.user, 64),
                version=plain_text(message.version, 32),
            )
            self._agents.changed(agent_id)
        else:
            log.warning("agent=%s sent a %s, which agents may not send", agent_id, message.type)

    async def _decided(self, agent_id: str, decision: ConsentDecision) -> None:
        session = self._live.get(decision.session_id)
        if session is None or session.agent_id != agent_id:
            log.warning("agent=%s answered a session that is not its own", agent_id)
            return
        if session.state is not State.AWAITING_CONSENT:
            # Too late (expired, cancelled): make sure the agent drops its grant.
            self._tell_agent(session, SessionEnd(session_id=session.id, reason="expired"))
            return
        details = {
            "prompt": decision.prompt,
            "decision": "granted" if decision.granted else "denied",
            "via": decision.via,
            "seconds_to_decide": decision.elapsed,
            "scope": session.kind + (" view-only" if decision.view_only else ""),
        }
        actor = f"user@{session.hostname}"
        if decision.granted:
            session.view_only = decision.view_only
        await self._move(
            session.id,
            State.ACTIVE if decision.granted else State.DENIED,
            actor=actor,
            details=details,
        )

    def _agent_changed(self, agent_id: str, online: bool) -> None:
        if online:
            return
        for session in list(self._live.values()):
            if session.agent_id == agent_id and not session.final:
                self._spawn(self.end_quietly(session.id, reason="agent_lost", actor="system"))

    async def _expire(self, session_id: str) -> None:
        session = self._live.get(session_id)
        if session is not None and session.state is State.AWAITING_CONSENT:
            try:
                await self._move(session_id, State.EXPIRED, actor="system")
            except IllegalTransition:
                return
            self._tell_agent(session, SessionEnd(session_id=session_id, reason="expired"))

    # the one place where state changes

    async def _move(
        self,
        session_id: str,
        new: State,
        *,
        actor: str,
        reason: EndReason | None = None,
        details: Mapping[str, object] | None = None,
    ) -> Session:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._live.get(session_id)
            if current is None:
                raise IllegalTransition(f"session {session_id} is not live")
            if new is State.ENDED:
                self._stop_relays(current)
            after, event = current.transition(new, actor=actor, reason=reason, details=details)
            await self._audit.write(
                event.type, actor=event.actor, target=event.target, details=event.details
            )
            current.__dict__.update(after.__dict__)
            self._store.save_session(current)
        if current.final:
            self._finished(current)
        self._publish(current)
        return current

    def _stop_relays(self, session: Session) -> None:
        for stop in self._relays.pop(session.id, []):
            stats = stop()
            session.bytes_to_agent += stats.to_agent
            session.bytes_from_agent += stats.from_agent
            session.recording = stats.recording or session.recording
            session.recording_sha256 = stats.recording_sha256 or session.recording_sha256

    def _finished(self, session: Session) -> None:
        self._live.pop(session.id, None)
        self._locks.pop(session.id, None)
        timer = self._timers.pop(session.id, None)
        if timer is not None:
            timer.cancel()

    def _tell_agent(self, session: Session, message: Message) -> None:
        live = self._agents.get(session.agent_id)
        if live is None:
            return
        try:
            live.link.send(message)
        except TunnelError as exc:
            log.warning(
                "agent=%s session=%s could not be told: %s", session.agent_id, session.id, exc
            )

    def _publish(self, session: Session) -> None:
        self._events.publish(
            {"type": "session", "session": session.to_json()}, audience=f"user:{session.technician}"
        )

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # start-up and shut-down

    async def recover(self) -> int:
        """Sessions left open by a previous broker process end as broker_restart."""
        stale = self._store.open_sessions()
        for session in stale:
            self._live[session.id] = session
            await self._move(session.id, State.ENDED, actor="system", reason="broker_restart")
        return len(stale)

    async def shutdown(self) -> None:
        for session in list(self._live.values()):
            if session.state in (State.ACTIVE, State.AWAITING_CONSENT):
                await self.end_quietly(session.id, reason="broker_restart", actor="system")
        for task in list(self._tasks):
            task.cancel()

    async def fail(self, session_id: str, message: str) -> None:
        """A session that cannot go on (its screen failed, ...): audit why as
        ``session.failed``, then end it with reason ``error`` (unless already over)."""
        session = self._live.get(session_id)
        if session is None or session.final:
            return
        text = plain_text(message, MAX_REASON) or "unknown error"
        await self._audit.write(
            "session.failed",
            actor="system",
            target=session_id,
            details={**session.summary(), "error": text},
        )
        with contextlib.suppress(IllegalTransition):
            await self._move(
                session_id, State.ENDED, actor="system", reason="error", details={"error": text}
            )
            self._tell_agent(session, SessionEnd(session_id=session_id, reason="error"))
