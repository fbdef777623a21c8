"""The session registry: every help session, its consent and its end, audited first.

All state changes go through ``_move``: the frozen session's ``transition``
computes the next state and its audit event, the event is committed, and only
then does the new session replace the old one (stored, published, acted on).
If the audit write fails the session stays as it was and the action is refused.

The agent's messages about sessions (a consent decision, the user ending one)
arrive here from the tunnel's control router (``tunnel/dispatch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import cast

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.recording import sealed_traffic
from allowhelp.broker.audit.rfb_recovery import recover_any
from allowhelp.broker.errors import (
    AgentUnreachable,
    AuditUnavailable,
    BadRequest,
    BrokerError,
    Conflict,
    IllegalTransition,
    NotFound,
    StoreError,
    TunnelError,
)
from allowhelp.broker.model.session import Session, State, Traffic, user_actor
from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.sessions.consent import (
    MAX_REASON,
    clean_reason,
    clean_text,
    consent_request,
    decision_details,
)
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.help import HelpDesk, format_code, normalise_code
from allowhelp.broker.sessions.saver import SessionSaver
from allowhelp.broker.sessions.screenchoice import clean_monitor, screen_refusal
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import (
    KINDS,
    TERMINAL_KINDS,
    ConsentDecision,
    EndReason,
    Kind,
    Message,
    SessionEnd,
)
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

Stopper = Callable[[], Traffic]
# What other rooms add to a session's end record (the chat transcript's digest),
# and who hears of a session that is over (the report for the ticket system).
EndDetails = Callable[[str], Awaitable[Mapping[str, object]]]
FinalListener = Callable[[Session], None]
MAX_TICKET, MAX_NOTES = 100, 10_000
OWED_RETRY_FIRST, OWED_RETRY_MAX = 1.0, 30.0
SHUTDOWN_ROWS = 10.0  # seconds the shutdown waits for session rows still owed


class SessionRegistry:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        agents: AgentRegistry,
        events: EventHub,
        help_desk: HelpDesk,
        *,
        organisation: str,
        consent_timeout: float,
    ) -> None:
        self._db = db
        self._rows = SessionSaver(db)  # rows written behind the audit (sessions/saver.py)
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
        self._unrecorded: dict[str, Traffic] = {}  # counted by stopped relays, end not recorded
        self._owed: set[str] = set()  # ended, record owed: written once the log takes it
        self._tasks: set[asyncio.Task[object]] = set()
        self._end_details: list[EndDetails] = []
        self._final_listeners: list[FinalListener] = []
        agents.subscribe(self._agent_changed)

    @property
    def agents(self) -> AgentRegistry:
        return self._agents

    def add_end_details(self, hook: EndDetails) -> None:
        self._end_details.append(hook)

    def on_final(self, listener: FinalListener) -> None:
        self._final_listeners.append(listener)

    # lookups

    def live_sessions(self) -> list[Session]:
        """The sessions this process runs that are not over."""
        return [session for session in self._live.values() if not session.final]

    def live(self, session_id: str) -> Session | None:
        """A session that is not over yet (or whose end is owed), from memory:
        for the attach path, which must not await."""
        return self._live.get(session_id)

    def _latest(self, session_id: str) -> Session | None:
        return self._live.get(session_id) or self._rows.latest(session_id)

    async def get(self, session_id: str) -> Session | None:
        """Any session: live, or over (its row, read off the event loop)."""
        found = self._latest(session_id)
        return found if found is not None else await self._db.read(Store.session, session_id)

    async def listed(self, username: str, is_admin: bool, limit: int = 200) -> list[Session]:
        stored = await self._db.read(Store.sessions, None if is_admin else username, limit)
        newer = [*self._rows.pending(), *self._live.values()]
        merged = {s.id: s for s in stored} | {
            s.id: s for s in newer if is_admin or s.technician == username
        }
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
        ticket: object = "",
        monitor: object = "",
    ) -> Session:
        if kind not in KINDS:
            raise BadRequest('kind must be "shell", "admin-shell", "screen" or "files"')
        text = clean_reason(reason)
        picked = clean_monitor(kind, monitor)
        ticket_text = clean_text(ticket, "ticket", MAX_TICKET)
        agent = await self._db.read(Store.agent, agent_id) if isinstance(agent_id, str) else None
        if agent is None or agent.removed:
            raise NotFound("no such machine", code="no_such_agent")
        if help_code:
            if not await self._help.belongs(help_code, agent_id):
                raise BadRequest("that help code is not from this machine", code="bad_help_code")
            help_code = format_code(normalise_code(help_code))
        typed_kind: Kind = kind  # narrowed by `kind not in KINDS` above
        live = self._agents.get(agent_id)
        session = Session.new(
            agent_id=agent_id,
            hostname=agent.hostname,
            technician=technician,
            technician_name=technician_name,
            kind=typed_kind,
            reason=text,
            help_code=help_code,
            language=live.language if live is not None else "en",  # the phrase's words
            ticket=ticket_text,
            monitor=picked,
        )
        await self._audit.write(
            "session.requested",
            actor=f"technician:{technician}",
            target=session.id,
            details={
                **session.summary(),
                "phrase": session.phrase,
                "help_code": help_code,
                "ticket": ticket_text,
                **({"monitor": picked} if picked else {}),
            },
        )
        try:
            await self._rows.save_now(session)  # the session exists once it is stored
        except StoreError:
            await self._abandon(session)
            raise
        self._live[session.id] = session
        self._publish(session)
        await self._ask(session)
        return self._latest(session.id) or session

    async def _abandon(self, session: Session) -> None:
        """A request whose session could not be stored: the technician is told it
        failed (503), so the chain says it ended at once, and it is listed nowhere."""
        error = "the broker database is unavailable"
        _, event = session.transition(
            State.ENDED, actor="system", reason="error", details={"error": error}
        )
        try:
            await self._audit.write(
                event.type, actor=event.actor, target=event.target, details=event.details
            )
        except AuditUnavailable:  # said by the writer; the chain ends at the request
            log.error("session=%s: the end of an unstored request is not on the record", session.id)

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
            raise Conflict("the machine is offline", code="agent_offline")
        refusal = _refusal(session, live.system, live.nobody_signed_in) or screen_refusal(
            session, live
        )
        if refusal is not None:  # nobody could answer: said now, not after the timeout
            reason, code, error = refusal
            await self._move(
                session.id, State.ENDED, actor="system", reason=reason, details={"error": error}
            )
            raise Conflict(error, code=code)
        request = consent_request(session, organisation=self._organisation, timeout=self._timeout)
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
            raise AgentUnreachable("the machine did not take the request") from exc
        if session.help_code:
            try:
                await self._help.used(session.help_code, session.id)
            except StoreError as exc:  # the ticket stays listed; the session goes on
                log.warning("session=%s: help code not marked used: %s", session.id, exc)
        loop = asyncio.get_running_loop()
        self._timers[session.id] = loop.call_later(
            self._timeout, lambda: self._spawn(self._expire(session.id))
        )

    async def end(
        self,
        session_id: str,
        *,
        reason: EndReason,
        actor: str,
        details: Mapping[str, object] | None = None,
    ) -> Session:
        """End a session. Access stops first (relays, then the PC told); if the
        record cannot be written, the end is owed and written when the log
        takes it again (``_record_owed_end``), and ``AuditUnavailable`` says so."""
        try:
            session = await self._move(
                session_id, State.ENDED, actor=actor, reason=reason, details=details
            )
        except AuditUnavailable:
            self._owe_end(session_id, reason, actor, details)
            raise
        if reason not in ("user", "agent_lost"):
            self._tell_agent(session, SessionEnd(session_id=session_id, reason=reason))
        return session

    def ending(self, session_id: str) -> bool:
        """Whether the session's end is decided but not yet on the record."""
        return session_id in self._owed

    def _owe_end(
        self,
        session_id: str,
        reason: EndReason,
        actor: str,
        details: Mapping[str, object] | None,
    ) -> None:
        session = self._live.get(session_id)
        if session is None or session_id in self._owed:
            return
        log.error(
            "session=%s ended but its record is owed: the audit log is unavailable", session_id
        )
        self._owed.add(session_id)
        if reason not in ("user", "agent_lost"):  # the PC ended it, or is gone
            self._tell_agent(session, SessionEnd(session_id=session_id, reason=reason))
        self._spawn(self._record_owed_end(session_id, reason, actor, details))

    async def _record_owed_end(
        self,
        session_id: str,
        reason: EndReason,
        actor: str,
        details: Mapping[str, object] | None,
    ) -> None:
        """Write an owed end as soon as the audit log takes records again."""
        delay = OWED_RETRY_FIRST
        late = {**(details or {}), "recorded_late": True}
        while session_id in self._owed:
            await asyncio.sleep(delay)
            try:
                await self._move(session_id, State.ENDED, actor=actor, reason=reason, details=late)
            except AuditUnavailable:
                delay = min(delay * 2, OWED_RETRY_MAX)
            except IllegalTransition:
                return

    async def end_quietly(self, session_id: str, *, reason: EndReason, actor: str) -> None:
        """End unless already over (a relay and the user may both end it at once)."""
        session = self._live.get(session_id)  # a session that is not live is over
        if session is not None and not session.final:
            with contextlib.suppress(IllegalTransition):
                await self.end(session_id, reason=reason, actor=actor)

    def attach_relay(self, session_id: str, stop: Stopper) -> None:
        """A relay serves this session; ending the session stops it first, so the
        end record carries its byte counts and the recording's digest."""
        self._relays.setdefault(session_id, []).append(stop)

    def has_relay(self, session_id: str) -> bool:
        return bool(self._relays.get(session_id))

    def agent_link(self, agent_id: str) -> AgentLink | None:
        live = self._agents.get(agent_id)
        return None if live is None else live.link

    async def audit_started(self, session: Session, details: dict[str, object]) -> None:
        await self._audit.write(
            "session.started",
            actor=f"technician:{session.technician}",
            target=session.id,
            details={**session.summary(), **details},
        )

    # the agent's side

    async def on_user_end(self, agent_id: str, message: SessionEnd) -> None:
        """The person at the PC ended a session (End button, ``allowhelp-agent end``),
        or the PC could not put it to anyone (nobody signed in, no admin shell on a
        per-user agent, the user's session helper gone)."""
        session = self._live.get(message.session_id)
        if session is None or session.agent_id != agent_id:
            log.warning("agent=%s ended a session that is not its own", agent_id)
            return
        if message.reason == "user":
            await self.end_quietly(message.session_id, reason="user", actor=user_actor(agent_id))
            return
        reason: EndReason = (
            message.reason
            if message.reason in ("nobody_signed_in", "unsupported", "signed_out")
            else "error"
        )
        await self.end_quietly(message.session_id, reason=reason, actor="system")

    async def on_decision(self, agent_id: str, decision: ConsentDecision) -> None:
        session = self._live.get(decision.session_id)
        if session is None or session.agent_id != agent_id:
            log.warning("agent=%s answered a session that is not its own", agent_id)
            return
        if session.state is not State.AWAITING_CONSENT:
            # Too late (expired, cancelled): make sure the agent drops its grant.
            self._tell_agent(session, SessionEnd(session_id=session.id, reason="expired"))
            return
        try:
            await self._move(
                session.id,
                State.ACTIVE if decision.granted else State.DENIED,
                actor=user_actor(agent_id),
                details=decision_details(session, decision),
                view_only=decision.granted and decision.view_only,
            )
        except AuditUnavailable:
            # Not recorded, so not taken: the PC must not hold a grant the
            # broker never adopted (it would show "session active" for nothing).
            self._tell_agent(session, SessionEnd(session_id=session.id, reason="error"))
            raise

    def _agent_changed(self, agent_id: str, online: bool) -> None:
        if online:
            return
        for session in list(self._live.values()):
            if session.agent_id == agent_id and not session.final:
                self._spawn(self.end_quietly(session.id, reason="agent_lost", actor="system"))

    async def _expire(self, session_id: str) -> None:
        session = self._live.get(session_id)
        if session is not None and session.state is State.AWAITING_CONSENT:
            self._tell_agent(session, SessionEnd(session_id=session_id, reason="expired"))
            try:
                await self._move(session_id, State.EXPIRED, actor="system")
            except IllegalTransition:
                return
            except AuditUnavailable:  # expired on the PC; on the record as soon as it can be
                retry = asyncio.get_running_loop().call_later(
                    OWED_RETRY_MAX, lambda: self._spawn(self._expire(session_id))
                )
                self._timers[session_id] = retry
                raise

    # the one place where state changes

    async def _move(
        self,
        session_id: str,
        new: State,
        *,
        actor: str,
        reason: EndReason | None = None,
        details: Mapping[str, object] | None = None,
        view_only: bool = False,
    ) -> Session:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._live.get(session_id)
            if current is None:
                raise IllegalTransition(f"session {session_id} is not live")
            traffic = None
            if new is State.ENDED:  # access stops before its end is recorded
                traffic = self._unrecorded.pop(session_id, Traffic()) + self._stop_relays(
                    session_id
                )
                # the recording complete on disk before its end record
                traffic, sealed = await sealed_traffic(traffic)
                details = {**(details or {}), **sealed, **await self._more_end_details(session_id)}
            after, event = current.transition(
                new,
                actor=actor,
                reason=reason,
                details=details,
                view_only=view_only,
                traffic=traffic,
            )
            try:
                await self._audit.write(
                    event.type, actor=event.actor, target=event.target, details=event.details
                )
            except AuditUnavailable:
                if traffic is not None:  # kept for the record that is owed
                    self._unrecorded[session_id] = traffic
                raise
            self._live[session_id] = after
            self._rows.save(after)  # behind the record: a slow database holds up nothing
        if after.final:
            self._finished(after)
        self._publish(after)
        return after

    async def _more_end_details(self, session_id: str) -> dict[str, object]:
        more: dict[str, object] = {}
        for hook in self._end_details:
            try:
                more.update(await hook(session_id))
            except BrokerError as exc:  # the store cannot say: the end is still recorded
                log.error("session=%s: end details missing: %s", session_id, exc)
        return more

    async def set_notes(self, session_id: str, notes: object, *, actor: str) -> Session:
        """The technician's notes: audited (``session.notes``) before they are kept."""
        text = clean_text(notes, "notes", MAX_NOTES, multiline=True)
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._latest(session_id) or await self._db.read(Store.session, session_id)
            if current is None:
                raise NotFound("no such session")
            await self._audit.write(
                "session.notes",
                actor=actor,
                target=session_id,
                details={**current.summary(), "ticket": current.ticket, "notes": text},
            )
            after = dataclasses.replace(current, notes=text)
            if session_id in self._live:
                self._live[session_id] = after
                self._rows.save(after)
            else:
                await self._rows.save_now(after)
        if session_id not in self._live:
            self._locks.pop(session_id, None)
        self._publish(after)
        return after

    def _stop_relays(self, session_id: str) -> Traffic:
        """Stop what relays the session (access ends before its record is written)."""
        return sum((stop() for stop in self._relays.pop(session_id, [])), Traffic())

    def _finished(self, session: Session) -> None:
        for listener in self._final_listeners:
            try:
                listener(session)
            except Exception:  # a listener's failure must not undo an end
                log.exception("session=%s: a listener of its end failed", session.id)
        self._owed.discard(session.id)
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
        task.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, BrokerError):  # already said where it happened (owed, retried)
            log.error("session work stopped: %s", exc)
        else:
            log.error("session work failed", exc_info=exc)

    # start-up and shut-down

    async def recover(self, recordings: Path | None = None, *, own: bool = True) -> int:
        """Sessions left open by a previous broker process end as broker_restart.

        A shell's or screen's recording in ``recordings`` is what that process wrote: made
        valid (a torn last line cut) and hashed into the end record, so it replays.
        ``own=False`` (node/cluster.py): only those of dead nodes sharing the store.
        """
        stale = await self._db.run(Store.claim_stale_sessions, own=own)
        for session in stale:
            self._live[session.id] = session
            details: dict[str, object] = {}
            if recordings is not None and session.kind in (*TERMINAL_KINDS, "screen"):
                details = await self._recover_recording(recordings, session.id)
            await self._move(
                session.id, State.ENDED, actor="system", reason="broker_restart", details=details
            )
        return len(stale)

    async def _recover_recording(self, folder: Path, session_id: str) -> dict[str, object]:
        """Hand the recording on disk to the end record, as a stopped relay would."""
        try:
            found = await asyncio.to_thread(recover_any, folder, session_id)
        except OSError as exc:
            log.error("session=%s: its recording cannot be recovered: %s", session_id, exc)
            return {"recording_recovered": False}
        if found is None:
            return {}
        traffic = functools.partial(Traffic, recording=found.name, recording_sha256=found.sha256)
        self.attach_relay(session_id, traffic)
        return found.details()

    async def shutdown(self) -> None:
        for session in list(self._live.values()):
            if session.state in (State.ACTIVE, State.AWAITING_CONSENT):
                await self.end_quietly(session.id, reason="broker_restart", actor="system")
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):  # rows owed: a restart would end them again
            async with asyncio.timeout(SHUTDOWN_ROWS):
                await self._rows.drain()
        await self._rows.close()

    async def finish(self, session_id: str, outcome: Outcome) -> Outcome:
        """End a session as its relay saw it end, unless something ended it first.

        Never raises: a relay's end must always reach its socket. If the end
        cannot be audited the PC is still told to stop (stopping access is
        always allowed) and the outcome says the audit failed.
        """
        current = await self.get(session_id)
        if current is None or current.final:
            # An attached session was active, so whatever ended it gave an EndReason.
            return Outcome(cast("EndReason", current.end_reason if current else "error"))
        try:
            if outcome.failure is not None:
                await self.fail(session_id, outcome.failure.message)
            else:
                actor = current.actor_for(outcome.reason)
                await self.end_quietly(session_id, reason=outcome.reason, actor=actor)
        except AuditUnavailable as exc:  # the end is owed (``end``); the PC was told
            return Outcome("error", exc)
        return outcome

    async def fail(self, session_id: str, message: str) -> None:
        """A session that cannot go on (its screen failed, ...): audit why as
        ``session.failed``, then end it with reason ``error`` (unless already over)."""
        session = self._live.get(session_id)
        if session is None or session.final:
            return
        text = plain_text(message, MAX_REASON) or "unknown error"
        try:
            await self._audit.write(
                "session.failed",
                actor="system",
                target=session_id,
                details={**session.summary(), "error": text},
            )
        finally:  # a session that failed ends, on the record or owed to it
            with contextlib.suppress(IllegalTransition):
                await self.end(session_id, reason="error", actor="system", details={"error": text})


def _refusal(
    session: Session, system: bool, nobody_signed_in: bool
) -> tuple[EndReason, str, str] | None:
    """Why the PC cannot be asked at all: (end reason, error code, message)."""
    if session.kind == "admin-shell" and not system:
        return (
            "unsupported",
            "admin_shell_unsupported",
            "this PC's agent runs per user: an administrator shell needs the machine "
            "service (allowhelp-agent run --system)",
        )
    if nobody_signed_in:
        return (
            "nobody_signed_in",
            "nobody_signed_in",
            "nobody is signed in at this PC: there is nobody to allow it",
        )
    return None
