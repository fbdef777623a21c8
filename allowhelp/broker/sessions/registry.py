"""The session registry: what the technician and the PC ask of help sessions.

A technician's request becomes a session asked of the PC (or refused at once
when nobody could answer); the PC's consent decision and the user's end arrive
from the tunnel's control router (``tunnel/dispatch.py``); sessions a previous
process left open end at start-up. Every state change goes through the book's
one transition path (``book.py``), audited first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.rfb_recovery import recover_any
from allowhelp.broker.errors import (
    AgentUnreachable,
    AuditUnavailable,
    BadRequest,
    Conflict,
    IllegalTransition,
    NotFound,
    StoreError,
    TunnelError,
)
from allowhelp.broker.model.session import Session, State, Traffic, user_actor
from allowhelp.broker.sessions.book import OWED_RETRY_MAX, SessionBook
from allowhelp.broker.sessions.consent import (
    clean_reason,
    clean_text,
    consent_request,
    decision_details,
)
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.help import HelpDesk, normalise_code
from allowhelp.broker.sessions.refusals import cannot_ask
from allowhelp.broker.sessions.screenchoice import clean_monitor
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import ConsentDecision, SessionEnd
from allowhelp.protocol.kinds import KINDS, TERMINAL_KINDS, EndReason, Kind
from allowhelp.protocol.text import format_code

log = logging.getLogger(__name__)

MAX_TICKET, MAX_NOTES = 100, 10_000
SHUTDOWN_ROWS = 10.0  # seconds the shutdown waits for session rows still owed


class SessionRegistry(SessionBook):
    """Requests in, the PC's answers, the technician's notes; start-up and shut-down."""

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
        super().__init__(db, audit, agents, events)
        self._help = help_desk
        self._organisation = organisation
        self._timeout = consent_timeout
        agents.subscribe(self._agent_changed)
        agents.subscribe_link_lost(self._link_lost)

    @property
    def agents(self) -> AgentRegistry:
        return self._agents

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
        view_only: object = False,
    ) -> Session:
        if kind not in KINDS:
            raise BadRequest('kind must be "shell", "admin-shell", "screen" or "files"')
        if not isinstance(view_only, bool) or (view_only and kind != "files"):
            raise BadRequest(
                "view_only: true or false, and asked for files only", code="bad_view_only"
            )
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
            view_only=view_only is True,
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
        # An idle agent holds only its doorbell: rung, and asked once its tunnel said
        # hello, so the checks below see who is signed in now (tunnel/agents.py wake).
        live = await self._agents.wake(session.agent_id, "consent.request")
        if live is None:  # rung but silent (its doorbell is online), or offline
            rung = self._agents.online(session.agent_id)
            error = "the machine did not wake up in time" if rung else "the machine is offline"
            await self._move(
                session.id, State.ENDED, actor="system", reason="error", details={"error": error}
            )
            if rung:
                raise AgentUnreachable(error)
            raise Conflict(error, code="agent_offline")
        # Judged on this tunnel's Hello, so asked over it alone: after each await below
        # it must still be the agent's (``session_link``), never a newer one.
        link = live.link
        refusal = cannot_ask(session, live)
        if refusal is not None:  # nobody could answer: said now, not after the timeout
            reason, code, error = refusal
            await self._move(
                session.id, State.ENDED, actor="system", reason=reason, details={"error": error}
            )
            raise Conflict(error, code=code)
        if link is not None:
            self.pin_link(session.id, link)
        request = consent_request(session, organisation=self._organisation, timeout=self._timeout)
        await self._move(
            session.id,
            State.AWAITING_CONSENT,
            actor="system",
            details={"asked": request.encode().decode().strip()},
        )
        try:
            await asyncio.wait_for(self._still_there(session.id).ready.wait(), 10)
            self._still_there(session.id).send(request)
        except (TunnelError, TimeoutError) as exc:
            with contextlib.suppress(IllegalTransition):  # ended meanwhile (agent_lost)
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

    def _still_there(self, session_id: str) -> AgentLink:
        link = self.session_link(session_id)
        if link is None:
            raise TunnelError("the machine's tunnel closed")
        return link

    async def audit_started(self, session: Session, details: dict[str, object]) -> None:
        await self._audit.write(
            "session.started",
            actor=f"technician:{session.technician}",
            target=session.id,
            details={**session.summary(), **details},
        )

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
                # a files session asked as view only stays so, whatever the PC says
                view_only=decision.granted and (decision.view_only or session.view_only),
            )
        except AuditUnavailable:
            # Not recorded, so not taken: the PC must not hold a grant the
            # broker never adopted (it would show "session active" for nothing).
            self._tell_agent(session, SessionEnd(session_id=session.id, reason="error"))
            raise

    def _agent_changed(self, agent_id: str, online: bool) -> None:
        if not online:  # offline: every session of the agent is lost
            self._lose(agent_id, lambda session_id: True)

    def _link_lost(self, agent_id: str) -> None:
        """A tunnel went while the agent stays online (replaced by a newer one, or
        back to its doorbell): the sessions asked on it are lost. One still being
        asked (not yet tied to a tunnel: ``_ask`` waits for the PC to wake) goes on
        over the newer tunnel; ``_ask`` ties it there and checks after each await."""
        self._lose(
            agent_id,
            lambda session_id: session_id in self._links and self.session_link(session_id) is None,
        )

    def _lose(self, agent_id: str, lost: Callable[[str], bool]) -> None:
        for session in list(self._live.values()):
            if session.agent_id == agent_id and not session.final and lost(session.id):
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
