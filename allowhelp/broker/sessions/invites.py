"""Invitations: a second technician on a running session, with the PC user's consent (#18).

The session's technician (the owner) invites someone by login, to ``observe``
(output only) or to take ``control`` (may type). The PC user is asked about
that person by name, with a verification phrase of its own, through the same
consent path as any request: a ``consent.request`` whose ``session_id`` is the
invitation's id and whose ``joins`` names the session. Until the user allows
it, the invitee cannot attach; once they have, they may attach, and attach
again after a reloaded page or a dropped network, while the invitation stands
(one connection at a time: a new one replaces the one before; each is a
join on the record). The owner can revoke an invitation, the PC user can remove the
person (``session.end`` for the invitation's id), and every invitation ends
with its session. Everything is audited (AH17xx); invitations live in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from allowhelp.broker.audit.recording import open_recording
from allowhelp.broker.audit.rfb_format import SUFFIX
from allowhelp.broker.audit.rfb_recording import RfbRecorder
from allowhelp.broker.errors import (
    AgentUnreachable,
    AuditUnavailable,
    BadRequest,
    BrokerError,
    Conflict,
    Forbidden,
    NotFound,
    TunnelError,
)
from allowhelp.broker.model.phrase import verification_phrase
from allowhelp.broker.model.session import Session, State, Traffic, new_session_id, user_actor
from allowhelp.broker.relay.outcome import Outcome, Relay
from allowhelp.broker.sessions.invitation import (
    Connection,
    Invitation,
    InviteState,
    owner_not_running,
)
from allowhelp.broker.sessions.invite_book import InviteBook
from allowhelp.broker.store import Store
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import ConsentDecision, ConsentRequest, SessionEnd
from allowhelp.protocol.kinds import INVITE_MODES, JOINABLE, TERMINAL_KINDS, Kind

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 20.0


class InviteDesk(InviteBook):
    """Invitations into running sessions: the owner's side, the PC's answers, the
    invitee's attach; hooked to the session book's end (``InviteBook.__init__``)."""

    # the owner's side

    async def invite(
        self, session_id: str, *, owner: str, owner_name: str, username: object, mode: object
    ) -> Invitation:
        session = self._owned(session_id, owner)
        if session.state is not State.ACTIVE:
            raise Conflict(f"the session is {session.state}: only an active one takes others")
        if session.kind not in JOINABLE:
            raise Conflict(f"a {session.kind} session takes no other participants")
        if mode not in INVITE_MODES:
            raise BadRequest('mode must be "observe" or "control"', code="bad_mode")
        if not isinstance(username, str) or not username or len(username) > 64:
            raise BadRequest("username must be a technician's login", code="bad_username")
        if username == owner:
            raise BadRequest("you are in this session already", code="bad_username")
        user = await self._db.read(Store.user_by_name, username)
        if user is None or user.disabled:
            raise NotFound("no such technician", code="no_such_user")
        if self.live_for(session_id, username) is not None:
            raise Conflict(f"{username} is invited already", code="already_invited")
        live = self._sessions.agents.get(session.agent_id)
        if live is None:
            raise AgentUnreachable("the machine is offline")
        if not live.invites:
            raise Conflict(
                "this PC's agent is too old to take invitations",
                code="invites_unsupported",
            )
        invitation = Invitation(
            id=new_session_id(),
            session_id=session_id,
            agent_id=session.agent_id,
            username=username,
            full_name=user.full_name or username,
            mode=str(mode),
            phrase=verification_phrase(language=live.language),
            invited_by=owner,
        )
        request = ConsentRequest(
            session_id=invitation.id,
            organisation=self._organisation,
            technician=invitation.full_name,
            kind=session.kind,
            reason=f"{owner_name}: {session.reason}"[:500],
            phrase=invitation.phrase,
            timeout=self._timeout,
            joins=session_id,
            mode=invitation.mode,
            username=username,
        )
        await self._write(
            "invite.asked", f"technician:{owner}", invitation, phrase=invitation.phrase
        )
        self._all[invitation.id] = invitation
        link = invitation.link = self._sessions.session_link(session_id)  # after the await
        try:
            if link is None:
                raise TunnelError("the session's tunnel is gone")
            link.send(request)
        except TunnelError as exc:
            invitation.state = InviteState.EXPIRED
            raise AgentUnreachable("the machine did not take the invitation") from exc
        loop = asyncio.get_running_loop()
        self._timers[invitation.id] = loop.call_later(
            self._timeout, lambda: self._spawn(self._expire(invitation.id))
        )
        self._publish(session, invitation)
        return invitation

    async def revoke(self, session_id: str, username: str, *, owner: str) -> Invitation:
        """The owner takes an invitation back: the invitee's channel closes first."""
        self._owned(session_id, owner)
        invitation = self.live_for(session_id, username)
        if invitation is None:
            raise NotFound(f"{username} is not invited to this session", code="no_invitation")
        await self._finish(invitation, InviteState.REVOKED, "invite.revoked", f"technician:{owner}")
        return invitation

    def _owned(self, session_id: str, owner: str) -> Session:
        session = self._sessions.live(session_id)
        if session is None:
            raise NotFound("no such session, or it is over")
        if session.technician != owner:
            raise Forbidden("only the session's own technician invites others")
        return session

    # the agent's side: answers and removals (the rest goes to the registry)

    async def on_decision(self, agent_id: str, decision: ConsentDecision) -> None:
        invitation = self._all.get(decision.session_id)
        if invitation is None:
            await self._sessions.on_decision(agent_id, decision)
            return
        if invitation.agent_id != agent_id or invitation.state is not InviteState.ASKED:
            self._tell_agent(invitation, "expired")
            return
        granted = decision.granted
        event = "invite.granted" if granted else "invite.denied"
        details = {
            "prompt": decision.prompt,
            "via": decision.via,
            "seconds_to_decide": decision.elapsed,
            "view_only": decision.view_only,
        }
        try:
            await self._write(event, user_actor(agent_id), invitation, **details)
        except AuditUnavailable:
            self._tell_agent(invitation, "error")  # not recorded, so not taken
            raise
        self._cancel_timer(invitation.id)
        if granted:
            invitation.state = InviteState.ALLOWED
            if decision.view_only:
                invitation.mode = "observe"  # the user may lower control, never raise it
        else:
            invitation.state = InviteState.DENIED
        self._publish_by_id(invitation)

    async def on_user_end(self, agent_id: str, message: SessionEnd) -> None:
        invitation = self._all.get(message.session_id)
        if invitation is None:
            await self._sessions.on_user_end(agent_id, message)
            return
        if invitation.agent_id != agent_id or not invitation.live:
            return
        if message.reason == "user":
            await self._finish(
                invitation, InviteState.REMOVED, "participant.removed", user_actor(agent_id)
            )
        else:  # the PC could not ask (the session it joins is gone)
            await self._finish(invitation, InviteState.ENDED, "invite.expired", "system")

    async def _expire(self, invitation_id: str) -> None:
        invitation = self._all.get(invitation_id)
        if invitation is not None and invitation.state is InviteState.ASKED:
            self._tell_agent(invitation, "expired")
            invitation.state = InviteState.EXPIRED
            await self._write("invite.expired", "system", invitation)
            self._publish_by_id(invitation)

    async def _before_end(self, session_id: str) -> Traffic:
        """The session is ending: every invitation ends first, all at once (no await
        between), then each joined invitee's leaving is on the record, before the
        session's end record (as the owner's relay stops before it)."""
        stopped: list[tuple[Invitation, Traffic]] = []
        for invitation in self.of_session(session_id):
            if invitation.live:
                # its current connection's join on (or queued for) the record: else
                # there is nothing to leave (a connection still waiting to replace one)
                was_joined = invitation.state is InviteState.JOINED and (
                    invitation.connections in invitation.recorded
                )
                traffic = self._stop(invitation, InviteState.ENDED)
                if was_joined:
                    invitation.recorded.discard(invitation.connections)
                    stopped.append((invitation, traffic))
        for invitation, traffic in stopped:
            with contextlib.suppress(AuditUnavailable):  # said by the writer
                await self._write(
                    "participant.left",
                    "system",
                    invitation,
                    how="session_ended",
                    was_connected=True,
                    bytes_to_agent=traffic.to_agent,
                    bytes_from_agent=traffic.from_agent,
                )
        return self._seal_screen_recording(session_id)

    @staticmethod
    def _seal_screen_recording(session_id: str) -> Traffic:
        """The screen's recording, sealed now if still open (an owner's page that went
        before its relay ran); the owner's relay seals it when it stops."""
        recorder = open_recording(f"{session_id}{SUFFIX}")
        if not isinstance(recorder, RfbRecorder):
            return Traffic()
        return Traffic(recording=recorder.name, recording_sha256=recorder.close())

    def _session_over(self, session: Session) -> None:
        for invitation in self.of_session(session.id):
            self._publish(session, invitation)  # the invitee's page shows the end
            if invitation.live:  # missed by ``_before_end`` (an end another node wrote)
                event = "participant.left" if invitation.state is InviteState.JOINED else ""
                self._spawn(self._finish(invitation, InviteState.ENDED, event, "system"))
            else:
                self._retire(invitation)

    def _stop_quietly(self, invitation: Invitation) -> None:
        invitation.recorded.clear()
        self._stop(invitation, InviteState.ENDED)

    async def _finish(
        self, invitation: Invitation, state: InviteState, event: str, actor: str
    ) -> None:
        """Access stops first (the relay, the PC told), then the record."""
        was_joined = invitation.state is InviteState.JOINED
        invitation.recorded.clear()  # this record says how it ended, connected or not
        self._stop(invitation, state)
        if state is InviteState.ENDED:
            self._retire(invitation)
        if event:
            await self._write(event, actor, invitation, was_connected=was_joined)
        self._publish_by_id(invitation)

    def _stop(self, invitation: Invitation, state: InviteState) -> Traffic:
        """Access stops: the invitation's new state, its relay, the PC told."""
        invitation.state = state
        self._cancel_timer(invitation.id)
        traffic = invitation.stop() if invitation.stop is not None else Traffic()
        if state is InviteState.REVOKED:
            self._tell_agent(invitation, "technician")
        elif state is not InviteState.REMOVED:
            self._tell_agent(invitation, "expired")
        return traffic

    # the invitee's side: attaching

    def claim(
        self, session_id: str, username: str, kind: Kind, make: Callable[[Invitation], Relay]
    ) -> tuple[Connection, AgentLink, Relay]:
        """Like ``attach.claim`` for an invitee: synchronous, registered at once. A
        connection while one is open replaces it (a reload): the one before stops,
        and the new one's channel opens once it has gone (``run``). Only while the
        owner's relay runs: it records what all see, and its end ends the session."""
        session = self._sessions.live(session_id)
        invitation = self.live_for(session_id, username)
        if session is None or invitation is None or not invitation.attachable:
            raise Forbidden("not your session, or the PC user has not allowed you (yet)")
        same = session.kind == kind or (kind in TERMINAL_KINDS and session.kind in TERMINAL_KINDS)
        if not same or session.state is not State.ACTIVE or self._sessions.ending(session_id):
            raise Conflict(f"the session is not an active {kind} session")
        owner = self._sessions.owner_state(session.id)  # it records what they would see
        if owner is not True:
            raise owner_not_running(owner, kind)
        link = self._sessions.session_link(session.id)
        if link is None:
            raise AgentUnreachable("the machine is offline")
        relay = make(invitation)
        before = self._overs.get(invitation.id)
        if invitation.state is InviteState.JOINED and invitation.stop is not None:
            invitation.stop()  # the connection before: its channel closes, its run ends
        invitation.connections += 1
        joined = Connection(invitation, invitation.connections, asyncio.Event(), before)
        self._overs[invitation.id] = joined.over
        invitation.state = InviteState.JOINED
        invitation.stop = relay.stop
        self._publish(session, invitation)
        return joined, link, relay

    async def refused(self, session_id: str, username: str, why: BrokerError) -> None:
        """A technician who is neither the owner nor an allowed invitee knocked."""
        await self._audit.write(
            "participant.refused",
            actor=f"technician:{username}",
            target=session_id,
            details={"session": session_id, "error": why.message},
        )

    async def run(self, joined: Connection, link: AgentLink, relay: Relay) -> Outcome:
        """Run an invitee's relay to its end; their leaving never ends the session,
        nor their invitation (they may attach again while it stands)."""
        invitation, spec = joined.invitation, relay.channel
        outcome = Outcome("error", BrokerError(f"the {spec.kind} relay stopped unexpectedly"))
        on_record = False  # its join: a connection replaced before it is leaves no record
        try:
            if joined.replaces is not None:  # the PC frees the grant when that channel closes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(joined.replaces.wait(), OPEN_TIMEOUT)
            if not joined.current:
                raise Conflict("replaced by a newer connection, or the invitation ended")
            # its leaving is owed once this join is on the record (queued: a session's
            # end from now on writes it after the join; ``_before_end``)
            invitation.recorded.add(joined.number)
            try:
                await self._write(
                    "participant.joined",
                    f"technician:{invitation.username}",
                    invitation,
                    connection=joined.number,
                    **relay.started_details(),
                )
            except AuditUnavailable:
                invitation.recorded.discard(joined.number)
                raise
            on_record = True
            chan, _ = await asyncio.wait_for(
                link.open_channel(
                    relay.factory, spec.kind, invitation.id, term=spec.term, window=spec.window
                ),
                OPEN_TIMEOUT,
            )
            if not joined.current:  # stopped while its channel opened
                chan.close()
                raise Conflict("replaced by a newer connection, or the invitation ended")
            outcome = await relay.run(chan)
        except BrokerError as exc:
            outcome = Outcome("error", exc)
        except TimeoutError:
            outcome = Outcome("error", AgentUnreachable("the PC did not open the channel in time"))
        finally:
            traffic = relay.stop()
            await self._left(joined, outcome, traffic, on_record=on_record)
        return outcome

    async def gone_before(self, joined: Connection, relay: Relay) -> None:
        """The invitee's page went before its WebSocket was answered: the connection
        is over (nothing on the record yet), as if they had left at once."""
        await self._left(joined, Outcome("technician"), relay.stop(), on_record=False)

    async def _left(
        self, joined: Connection, outcome: Outcome, traffic: Traffic, *, on_record: bool
    ) -> None:
        """A connection is over: on the record unless something that ended the
        invitation recorded it (revoked, removed, the session ended)."""
        invitation = joined.invitation
        try:
            was_joined = invitation.state is InviteState.JOINED
            replaced = invitation.connections != joined.number
            if was_joined and not replaced:  # they left (nobody ended it): they may come back
                invitation.state = InviteState.LEFT
            # its leaving is this connection's to write: its join is on the record and
            # nothing that ended the invitation wrote it
            if not (on_record and joined.number in invitation.recorded):
                if was_joined:  # never on the record (the audit failed, or replaced)
                    self._publish_by_id(invitation)
                return
            invitation.recorded.discard(joined.number)
            with contextlib.suppress(AuditUnavailable):  # said by the writer
                await self._write(
                    "participant.left",
                    f"technician:{invitation.username}",
                    invitation,
                    connection=joined.number,
                    how="replaced" if replaced else outcome.reason,
                    bytes_to_agent=traffic.to_agent,
                    bytes_from_agent=traffic.from_agent,
                )
            self._publish_by_id(invitation)
        finally:
            joined.over.set()
            if self._overs.get(invitation.id) is joined.over:
                del self._overs[invitation.id]
