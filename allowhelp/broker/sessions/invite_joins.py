"""Invitations, the invitee's side: attaching to a session they were allowed into (#18).

``claim`` registers a connection at once (a new one replaces the one before: a
reloaded page), ``run`` opens its channel on the PC and relays until it ends,
and ``_left`` puts its leaving on the record, unless something that ended the
invitation wrote it. The owner's side and the PC's answers are ``InviteDesk``'s
(``sessions/invites.py``), which builds on this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from allowhelp.broker.errors import (
    AgentUnreachable,
    AuditUnavailable,
    BrokerError,
    Conflict,
    Forbidden,
)
from allowhelp.broker.model.session import State, Traffic
from allowhelp.broker.relay.outcome import Outcome, Relay
from allowhelp.broker.sessions.invitation import (
    Connection,
    Invitation,
    InviteState,
    owner_not_running,
)
from allowhelp.broker.sessions.invite_book import InviteBook
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.kinds import TERMINAL_KINDS, Kind

OPEN_TIMEOUT = 20.0


class InviteJoins(InviteBook):
    """An invitee's connections: claimed, run to their end, their leaving recorded."""

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
