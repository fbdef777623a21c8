"""The invitations of this process's sessions (#18): kept, looked up, told about.

``InviteBook`` holds the invitations in memory (live ones by id while their
session lives, the latest of ended sessions for their invitees' pages), and
what every step of ``invites.py`` uses: the audit record with who and how,
telling the PC, publishing to the owner's and the invitee's pages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import TunnelError
from allowhelp.broker.model.session import Session, Traffic
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.invitation import Invitation, invitee_view
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.protocol.control import SessionEnd
from allowhelp.protocol.kinds import EndReason

log = logging.getLogger(__name__)

KEEP_ENDED = 1000  # invitations of ended sessions kept for their invitees' pages


class InviteBook:
    def __init__(
        self,
        sessions: SessionRegistry,
        audit: AuditLog,
        db: StoreWorker,
        events: EventHub,
        *,
        organisation: str,
        consent_timeout: float,
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._db = db
        self._events = events
        self._organisation = organisation
        self._timeout = consent_timeout
        self._all: dict[str, Invitation] = {}  # by invitation id, while its session lives
        self._ended: dict[str, Invitation] = {}  # the latest of ended sessions, bounded
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # the latest connection of each invitation: set once it is over (``Connection.over``)
        self._overs: dict[str, asyncio.Event] = {}
        sessions.before_end(self._before_end)
        sessions.on_final(self._session_over)
        sessions.on_let_go(self._let_go)
        sessions.on_attach(self._owner_opened)

    # what a session's end does to its invitations (InviteDesk)

    async def _before_end(self, session_id: str) -> Traffic:
        raise NotImplementedError

    def _session_over(self, session: Session) -> None:
        raise NotImplementedError

    def _owner_opened(self, session: Session) -> None:
        """The owner's relay attached: the pages of those allowed in may join now."""
        for invitation in self.of_session(session.id):
            if invitation.live:
                self._publish(session, invitation)

    def _let_go(self, session_id: str) -> None:
        """Another node ended the session while this one was cut off (its end here,
        owed, is let go): its invitations go as any ended session's do, kept among
        the ended for their invitees' pages (stopped already: the end here stopped
        them before its record; one still live is stopped now)."""
        for invitation in self.of_session(session_id):
            if invitation.live:
                self._stop_quietly(invitation)
            self._retire(invitation)

    def _stop_quietly(self, invitation: Invitation) -> None:
        raise NotImplementedError

    # lookups

    def of_session(self, session_id: str) -> list[Invitation]:
        return [i for i in self._all.values() if i.session_id == session_id]

    def live_for(self, session_id: str, username: str) -> Invitation | None:
        for invitation in self.of_session(session_id):
            if invitation.username == username and invitation.live:
                return invitation
        return None

    def seen_by(self, session_id: str, username: str) -> Invitation | None:
        """``username``'s latest invitation into a session (live, or ended lately),
        whatever its state."""
        every = [*self._all.values(), *self._ended.values()]
        mine = [i for i in every if i.session_id == session_id and i.username == username]
        return max(mine, key=lambda i: i.created) if mine else None

    def sessions_for(self, username: str) -> list[tuple[Session, Invitation]]:
        """The live sessions ``username`` is invited into, with the invitation."""
        found = []
        for invitation in self._all.values():
            session = self._sessions.live(invitation.session_id)
            if invitation.username == username and invitation.live and session is not None:
                found.append((session, invitation))
        return found

    def _retire(self, invitation: Invitation) -> None:
        self._all.pop(invitation.id, None)
        self._ended[invitation.id] = invitation
        while len(self._ended) > KEEP_ENDED:  # the oldest go first
            del self._ended[next(iter(self._ended))]

    # plumbing

    async def _write(self, event: str, actor: str, invitation: Invitation, **more: object) -> None:
        await self._audit.write(
            event,
            actor=actor,
            target=invitation.session_id,
            details={**invitation.summary(), **more},
        )

    def _tell_agent(self, invitation: Invitation, reason: EndReason) -> None:
        link = self._sessions.agents.still(invitation.agent_id, invitation.link)
        if link is None:  # its session's tunnel is gone: nothing of it left on the PC
            return
        try:
            link.send(SessionEnd(session_id=invitation.id, reason=reason))
        except TunnelError as exc:
            log.warning("invitation=%s could not be told to the PC: %s", invitation.id, exc)

    def _cancel_timer(self, invitation_id: str) -> None:
        timer = self._timers.pop(invitation_id, None)
        if timer is not None:
            timer.cancel()

    def _publish_by_id(self, invitation: Invitation) -> None:
        session = self._sessions.live(invitation.session_id)
        if session is not None:
            self._publish(session, invitation)

    def _publish(self, session: Session, invitation: Invitation) -> None:
        """The owner sees the invitation change; the invitee sees the session."""
        self._events.publish(
            {"type": "invitation", "invitation": invitation.to_json()},
            audience=f"user:{session.technician}",
        )
        self._events.publish(
            {
                "type": "session",
                "session": invitee_view(
                    session, invitation, owner_here=self._sessions.owner_state(session.id) is True
                ),
            },
            audience=f"user:{invitation.username}",
        )

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
