"""One invitation into a running session (#18): who, how, its state, and the
session as its invitee sees it. Plain records without I/O; ``invites.py`` does
the asking, answering and attaching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from allowhelp.broker.errors import Conflict
from allowhelp.broker.model.session import Session, Traffic

if TYPE_CHECKING:
    from allowhelp.broker.tunnel.link import AgentLink


class InviteState(StrEnum):
    ASKED = "asked"
    ALLOWED = "allowed"
    JOINED = "joined"
    LEFT = "left"  # may attach again while the invitation stands
    DENIED = "denied"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REMOVED = "removed"  # by the PC user
    ENDED = "ended"  # with its session


LIVE = frozenset({InviteState.ASKED, InviteState.ALLOWED, InviteState.JOINED, InviteState.LEFT})
# Allowed by the PC user and still standing: the invitee may attach (again; a new
# connection while joined replaces the one before: a reloaded page, a dropped network).
ATTACHABLE = frozenset({InviteState.ALLOWED, InviteState.JOINED, InviteState.LEFT})


@dataclass
class Invitation:
    id: str
    session_id: str
    agent_id: str
    username: str
    full_name: str
    mode: str
    phrase: str
    invited_by: str
    state: InviteState = InviteState.ASKED
    created: float = field(default_factory=time.time)
    stop: Callable[[], Traffic] | None = None  # the attached relay's
    # the session's tunnel when it was asked: the PC is told over it or not at all
    link: AgentLink | None = None
    connections: int = 0  # how many times the invitee attached: the latest's number
    # the connections whose join is on (or queued for) the record, their leaving not yet
    recorded: set[int] = field(default_factory=set)

    @property
    def attachable(self) -> bool:
        return self.state in ATTACHABLE

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def summary(self) -> dict[str, object]:
        """What each audit record of this invitation says: who, into what, how."""
        return {
            "invitation": self.id,
            "session": self.session_id,
            "agent_id": self.agent_id,
            "invitee": self.username,
            "mode": self.mode,
            "invited_by": self.invited_by,
        }

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "username": self.username,
            "full_name": self.full_name,
            "mode": self.mode,
            "phrase": self.phrase,
            "invited_by": self.invited_by,
            "state": self.state.value,
            "created": self.created,
            "connections": self.connections,
        }


@dataclass(frozen=True)
class Connection:
    """One attach of an invitee: which one, when it is over, and the one it replaces."""

    invitation: Invitation
    number: int
    over: asyncio.Event
    replaces: asyncio.Event | None = None  # set once the connection before it has stopped

    @property
    def current(self) -> bool:
        """Not replaced by a newer connection, nor ended."""
        invitation = self.invitation
        return invitation.connections == self.number and invitation.state is InviteState.JOINED


def invitee_view(
    session: Session, invitation: Invitation, *, owner_here: bool
) -> dict[str, object]:
    """The session as its invitee sees it: their own phrase, their invitation, and
    whether its own technician has it open (``owner_here``: they may join only then)."""
    return {
        **session.to_json(),
        "phrase": invitation.phrase,
        "invitation": invitation.to_json(),
        "owner_here": owner_here,
        "view_only": session.view_only or invitation.mode != "control",
        "notes": "",
    }


def owner_not_running(owner: bool | None, kind: str) -> Conflict:
    """Why an invitee may not join: the owner's relay stopped (False), or not yet (None)."""
    if owner is False:
        return Conflict("the session is ending", code="session_ending")
    why = f"the session's technician has not opened its {kind} yet: join once they have"
    return Conflict(why, code="owner_not_attached")
