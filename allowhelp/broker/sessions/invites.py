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

from allowhelp.broker.audit.recording import open_recording
from allowhelp.broker.audit.rfb_format import SUFFIX
from allowhelp.broker.audit.rfb_recording import RfbRecorder
from allowhelp.broker.errors import (
    AgentUnreachable,
    AuditUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TunnelError,
)
from allowhelp.broker.model.phrase import verification_phrase
from allowhelp.broker.model.session import Session, State, Traffic, new_session_id, user_actor
from allowhelp.broker.sessions.invitation import (
    Invitation,
    InviteState,
)
from allowhelp.broker.sessions.invite_joins import InviteJoins
from allowhelp.broker.store import Store
from allowhelp.protocol.control import ConsentDecision, ConsentRequest, SessionEnd
from allowhelp.protocol.kinds import INVITE_MODES, JOINABLE

log = logging.getLogger(__name__)


class InviteDesk(InviteJoins):
    """Invitations into running sessions: the owner's side and the PC's answers (the
    invitee's attach: ``InviteJoins``); hooked to the session book's end
    (``InviteBook.__init__``)."""

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
