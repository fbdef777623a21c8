"""Several people on one shell: the owner's PTY, and the invitees who joined it (#18).

The session's technician (the owner) has the shell: their channel started the
PTY (``channels.py``). Each invitee the PC user allowed gets a channel of their
own under their invitation's grant; it starts nothing, it joins the owner's
room here:

- everything the shell prints goes to every participant's channel;
- what a ``control`` participant types goes to the shell; what an
  ``observe`` participant types is dropped here, whatever the broker let
  through (the broker drops it too: the agent does not trust it to);
- only the owner sets the terminal's size (an invitee's resize is dropped).

A slow participant must not stall the others: an invitee's channel is never
paused for, and one that lets more than ``MAX_BACKLOG`` bytes pile up unread is
closed (the owner's flow control stays as it was, end to end).

Screens need no room: each participant's screen channel runs its own engine
connection, view-only for observers (``screen.py``, ``rfbinput.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

MAX_BACKLOG = 4 * 1024 * 1024  # bytes an invitee may leave unread before it is closed


class Shell(Protocol):
    """The owner's shell backend (``channels.Backend``), as far as a room uses it."""

    def write(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...


class Sink(Protocol):
    """An invitee's channel (``channels.GatedChannel``), as far as a room uses it."""

    def write(self, data: bytes) -> None: ...

    def backlog(self) -> int: ...

    def finish(self, status: int, error: str | None = None) -> None: ...


@dataclass
class Member:
    """One invitee's side of a room; the ``Backend`` of their channel."""

    room: Room
    grant: Grant
    sink: Sink
    dropped: int = 0  # bytes typed by an observer and not passed on
    closed: bool = False

    @property
    def may_type(self) -> bool:
        return self.grant.mode == "control"

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.may_type:
            if not self.dropped:
                log.warning(
                    "session=%s input from observer %s dropped",
                    self.room.session_id,
                    self.grant.username or self.grant.session_id,
                )
            self.dropped += len(data)
            return
        self.room.shell.write(data)

    def pause(self) -> None:
        """Never paused for: a slow invitee is closed instead (``Room.output``)."""

    def resume(self) -> None:
        """See ``pause``."""

    def resize(self, cols: int, rows: int) -> None:
        """Only the owner sizes the terminal."""

    def close(self) -> int:
        self.closed = True
        if self.room.members.get(self.grant.session_id) is self:  # not their next channel's
            del self.room.members[self.grant.session_id]
        return 0


@dataclass
class Room:
    session_id: str
    shell: Shell
    members: dict[str, Member] = field(default_factory=dict)

    def output(self, data: bytes) -> None:
        for member in list(self.members.values()):
            if member.sink.backlog() > MAX_BACKLOG:
                log.warning(
                    "session=%s participant %s too slow: closed",
                    self.session_id,
                    member.grant.username,
                )
                member.close()
                member.sink.finish(1, "too slow to follow the session")
                continue
            member.sink.write(data)


class ParticipantHub:
    """The rooms of the running shells, by session id."""

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}

    def open(self, session_id: str, shell: Shell) -> None:
        """The owner's shell started: invitees may join it now."""
        self._rooms[session_id] = Room(session_id, shell)

    def close(self, session_id: str) -> None:
        """The owner's shell is gone; its members' channels close with their grants."""
        room = self._rooms.pop(session_id, None)
        if room is not None:
            for member in list(room.members.values()):
                member.close()

    def output(self, session_id: str, data: bytes) -> None:
        room = self._rooms.get(session_id)
        if room is not None and room.members:
            room.output(data)

    def join(self, grant: Grant, sink: Sink) -> Member:
        """An invitee's channel joins the shell its grant names; refused (RuntimeError)
        when that shell is not running."""
        room = self._rooms.get(grant.joins)
        if room is None:
            raise RuntimeError("the session this invitation joins has no running shell")
        member = Member(room, grant, sink)
        room.members[grant.session_id] = member
        log.info(
            "session=%s %s joined as %s",
            grant.joins,
            grant.username or grant.session_id,
            grant.role,
        )
        return member

    def members(self, session_id: str) -> list[Member]:
        room = self._rooms.get(session_id)
        return [] if room is None else list(room.members.values())
