"""The book of live sessions: the one place a session's state changes, and its end.

``SessionBook._move`` is every state change: the frozen session's ``transition``
computes the next state and its audit event, the event is committed, and only
then does the new session replace the old one (stored behind the record,
published, acted on). If the audit write fails the session stays as it was and
the action is refused. An end stops access first (the relays), then is recorded;
an end the log refuses is owed and written as soon as the log takes it again.

What the technician and the PC ask of sessions, and start-up and shut-down, are
``registry.py``'s (``SessionRegistry`` builds on this book).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import cast

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.recording import sealed_traffic
from allowhelp.broker.errors import AuditUnavailable, BrokerError, IllegalTransition, TunnelError
from allowhelp.broker.model.session import Session, State, Traffic
from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.sessions.consent import MAX_REASON
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.hooks import BookHooks
from allowhelp.broker.sessions.saver import SessionSaver
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import Message, SessionEnd
from allowhelp.protocol.kinds import EndReason
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

Stopper = Callable[[], Traffic]
OWED_RETRY_FIRST, OWED_RETRY_MAX = 1.0, 30.0


class SessionBook(BookHooks):
    """Live sessions by id: their one transition path, their relays, their ends."""

    def __init__(
        self, db: StoreWorker, audit: AuditLog, agents: AgentRegistry, events: EventHub
    ) -> None:
        super().__init__()
        self._db = db
        self._rows = SessionSaver(db)  # rows written behind the audit (sessions/saver.py)
        self._audit = audit
        self._agents = agents
        self._events = events
        self._live: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._relays: dict[str, list[Stopper]] = {}
        self._owner_on: dict[str, bool] = {}  # the owner's relay runs (``owner_started``)
        self._closing: set[str] = set()  # ends under way: relays stopped, record not yet
        self._unrecorded: dict[str, Traffic] = {}  # counted by stopped relays, end not recorded
        self._owed: set[str] = set()  # ended, record owed: written once the log takes it
        self._owed_as: dict[str, tuple[EndReason, str]] = {}  # the end decided: reason, actor
        self._tasks: set[asyncio.Task[object]] = set()
        # The tunnel each session was asked on: its messages and channels go there
        # or nowhere, never to a newer tunnel of the same agent (``session_link``).
        self._links: dict[str, AgentLink] = {}

    # lookups

    def live_sessions(self) -> list[Session]:
        """The sessions this process runs that are not over."""
        return [session for session in self._live.values() if not session.final]

    def pin_link(self, session_id: str, link: AgentLink) -> None:
        """The session belongs to this tunnel (the one whose Hello it was judged on)."""
        self._links[session_id] = link

    def session_link(self, session_id: str) -> AgentLink | None:
        """The tunnel the session was asked on, while it is still its agent's; None
        once it is gone or replaced (then the session cannot go on: it ends)."""
        session = self._live.get(session_id)
        if session is None:
            return None
        return self._agents.still(session.agent_id, self._links.get(session_id))

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

    def attach_relay(self, session_id: str, stop: Stopper) -> None:
        """A relay serves this session; ending the session stops it first, so the
        end record carries its byte counts and the recording's digest."""
        self._relays.setdefault(session_id, []).append(stop)

    def has_relay(self, session_id: str) -> bool:
        return bool(self._relays.get(session_id))

    def owner_started(self, session_id: str) -> None:
        """The owner's relay runs (its channel open, recording): others may join now."""
        self._owner_on[session_id] = True
        session = self.live(session_id)
        if session is not None:
            self._tell_attached(session)

    def owner_stopped(self, session_id: str) -> None:
        """The owner's relay is stopping: nobody joins any more (the session ends)."""
        self._owner_on[session_id] = False

    def owner_state(self, session_id: str) -> bool | None:
        """True while the owner's relay runs; False once it stopped; None: not yet."""
        return self._owner_on.get(session_id)

    def relay_attached(self, session_id: str, stop: Stopper) -> bool:
        """Whether this relay still serves the session: an end stops and forgets its
        relays before its record, so False once the session is ending or over."""
        return stop in self._relays.get(session_id, [])

    # ending

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
        link = self._links.get(session_id)  # the end forgets it: the PC is told after
        try:
            session = await self._move(
                session_id, State.ENDED, actor=actor, reason=reason, details=details
            )
        except AuditUnavailable:
            self._owe_end(session_id, reason, actor, details)
            raise
        if reason not in ("user", "agent_lost"):
            self._tell(session, link, SessionEnd(session_id=session_id, reason=reason))
        return session

    def ending(self, session_id: str) -> bool:
        """Whether the session's end is decided but not yet on the record (being
        written, or owed): nothing may attach to it any more."""
        return session_id in self._owed or session_id in self._closing

    async def end_quietly(self, session_id: str, *, reason: EndReason, actor: str) -> None:
        """End unless already over (a relay and the user may both end it at once)."""
        session = self._live.get(session_id)  # a session that is not live is over
        if session is not None and not session.final:
            with contextlib.suppress(IllegalTransition):
                await self.end(session_id, reason=reason, actor=actor)

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
        self._owed_as[session_id] = (reason, actor)
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
        if outcome.failure is None:  # an end already under way stopped this relay first:
            ended = await self.get(session_id)  # its reason is the one on the record
            if ended is not None and ended.final and ended.end_reason:
                return Outcome(cast("EndReason", ended.end_reason))
        return outcome

    async def fail(self, session_id: str, message: str) -> None:
        """A session that cannot go on (its screen failed, ...): audit why as
        ``session.failed``, then end it with reason ``error`` (unless already over, or
        its end is owed: that end is the one record it gets, written when it can be)."""
        session = self._live.get(session_id)
        if session is None or session.final or session_id in self._owed:
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
        try:
            async with lock:
                current = self._live.get(session_id)
                if current is None:
                    raise IllegalTransition(f"session {session_id} is not live")
                if new is State.ENDED and session_id in self._owed:
                    await self._check_late_end(session_id)
                    # the end that stopped access is the one recorded, whoever writes it
                    # (the relay it stopped ends the session too, as the PC's doing)
                    reason, actor = self._owed_as.get(session_id, (reason or "error", actor))
                    details = {**(details or {}), "recorded_late": True}
                traffic = None
                if new is State.ENDED:  # access stops before its end is recorded
                    self._closing.add(session_id)  # and nothing attaches meanwhile (``ending``)
                    traffic = self._unrecorded.pop(session_id, Traffic()) + self._stop_relays(
                        session_id
                    )
                    traffic += await self._stop_others(session_id)
                    # the recording complete on disk before its end record
                    traffic, sealed = await sealed_traffic(traffic)
                    details = {
                        **(details or {}),
                        **sealed,
                        **await self._more_end_details(session_id),
                    }
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
        finally:
            self._closing.discard(session_id)  # ended, owed (``_owed``), or not ended
        if after.final:
            self._finished(after)
        self._publish(after)
        return after

    async def _check_late_end(self, session_id: str) -> None:
        """An owed end another node has recorded meanwhile is not recorded twice: the
        session (stopped here already) is let go, ``IllegalTransition``."""
        if self._late_end_guard is None or await self._late_end_guard(session_id):
            return
        log.warning(
            "session=%s was ended by another node while this one was cut off: "
            "its end record is that node's, not written twice",
            session_id,
        )
        self._owed.discard(session_id)
        self._owed_as.pop(session_id, None)
        self._unrecorded.pop(session_id, None)
        self._live.pop(session_id, None)
        self._links.pop(session_id, None)
        self._owner_on.pop(session_id, None)
        self._locks.pop(session_id, None)  # held by the caller until it raises
        self._rows.forget(session_id)  # its row is the other node's now
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        self._let_go(session_id)
        raise IllegalTransition(f"session {session_id} was ended by another node")

    def _stop_relays(self, session_id: str) -> Traffic:
        """Stop what relays the session (access ends before its record is written)."""
        self._owner_on[session_id] = False
        return sum((stop() for stop in self._relays.pop(session_id, [])), Traffic())

    def _finished(self, session: Session) -> None:
        self._tell_final(session)
        self._owner_on.pop(session.id, None)
        self._owed.discard(session.id)
        self._owed_as.pop(session.id, None)
        self._live.pop(session.id, None)
        self._links.pop(session.id, None)
        self._locks.pop(session.id, None)
        timer = self._timers.pop(session.id, None)
        if timer is not None:
            timer.cancel()

    # telling others

    def _tell_agent(self, session: Session, message: Message) -> None:
        self._tell(session, self._links.get(session.id), message)

    def _tell(self, session: Session, link: AgentLink | None, message: Message) -> None:
        """Over the session's own tunnel; a session whose tunnel is gone has nothing
        left on the PC to tell (a newer tunnel never hears of it)."""
        link = self._agents.still(session.agent_id, link)
        if link is None:
            return
        try:
            link.send(message)
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
