"""The recent output of a running shell, kept by the broker for whoever joins it later (#18).

An invitee's channel gets the shell's output from the moment it joins the
owner's room on the PC (``agent/participants.py``); what was printed before
would be lost to them. The owner's relay therefore keeps a bounded tail of
everything the shell sent (``TAIL_BYTES``, each chunk once it is in the recording
and sent to the owner: a joiner never sees what the recording may not hold), and
an invitee's relay sends that tail first, so their terminal starts where the
owner's is.

What the tail is: the last ``TAIL_BYTES`` of output, and nothing from before
the last full clear (``clear``, ``reset``, ``ESC [2J``): what came before it is
off the owner's screen as well. A tail cut by the size limit starts after its
first line break, so it never begins inside an escape sequence or a character.

Following: an invitee's page gets the shell's live output from here too, not
from their own channel (whose output their relay drops): ``follow`` hands over
the tail and, from the same moment, every chunk the owner's relay keeps, so what
an invitee sees is always already in the recording, with no gap and nothing
twice. A follower more than ``FOLLOW_BACKLOG`` bytes behind is cut off (as the
agent cuts off an invitee's channel that falls as far behind): a slow invitee
never holds up the shell or the owner.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

TAIL_BYTES = 64 * 1024
FOLLOW_BACKLOG = 4 * 1024 * 1024  # bytes a follower may leave unsent before it is cut off
# Full clears: xterm's "reset" (RIS), "erase display" and "erase saved lines".
CLEARS = (b"\x1bc", b"\x1b[2J", b"\x1b[3J")


class Scrollback:
    """The last ``limit`` bytes of a shell's output since its last full clear.

    ``add`` is on the shell's hot path, so it only keeps the last ``limit``
    bytes; the clear is looked for in them when someone joins (``tail``): a
    clear more than ``limit`` bytes back is cut off by the size anyway. Bytes
    dropped from the front of the first chunk are skipped, not cut off it:
    once the tail is full every keystroke's echo drops a byte, and slicing
    would copy the first chunk (up to ``limit`` bytes) each time.
    """

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._skip = 0  # bytes of the first chunk that are no longer in the tail
        self._size = 0  # bytes in the tail: the chunks' minus ``_skip``
        self._cut = False  # bytes were dropped from the front for the size limit
        self._followers: list[Follower] = []

    def add(self, data: bytes) -> None:
        if self._followers:
            for follower in tuple(self._followers):  # one cut off leaves the list
                follower.feed(data)
        if len(data) >= self._limit:
            self._chunks.clear()
            self._skip, self._cut = 0, True
            self._chunks.append(data[-self._limit :])
            self._size = self._limit
            return
        self._chunks.append(data)
        self._size += len(data)
        over = self._size - self._limit
        while over > 0:
            self._cut = True
            left = len(self._chunks[0]) - self._skip
            if over < left:
                self._skip += over
                self._size -= over
                return
            self._chunks.popleft()
            self._skip = 0
            self._size -= left
            over -= left

    def follow(self) -> tuple[bytes, Follower]:
        """The tail now, and a follower that gets every chunk added from now on."""
        follower = Follower(self._followers)
        self._followers.append(follower)
        return self.tail(), follower

    def close(self) -> None:
        """The owner's relay stopped: nothing more comes to any follower (what each
        has queued, recorded already, is still theirs to send: the shell's last words)."""
        for follower in tuple(self._followers):
            follower.finish()

    def tail(self) -> bytes:
        data = b"".join(self._chunks)[self._skip :]
        clear = max(data.rfind(mark) for mark in CLEARS)
        if clear >= 0:  # the screen started again there
            return data[clear:]
        if self._cut:
            newline = data.find(b"\n")
            data = data[newline + 1 :] if newline >= 0 else data
        return data


class Follower:
    """One invitee's page following a shell's kept output, chunk by chunk, in order.

    ``feed`` runs in the owner's relay (on its hot path, just before the owner is
    shown the chunk) and never raises: while ``take``'s caller waits with nothing
    queued, ``show`` may send a chunk at once (the invitee's shortcut); else the
    chunk waits for ``take``.
    """

    def __init__(self, followers: list[Follower]) -> None:
        self._followers = followers  # the scrollback's list, to leave it
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._changed = asyncio.Event()
        self._waiting = False  # ``take``'s caller waits with nothing queued: ``show`` may send
        self.show: Callable[[bytes], bool] | None = None
        self.cut = asyncio.Event()  # cut off: more than FOLLOW_BACKLOG bytes behind
        self.ended = False  # nothing more comes: the owner's relay stopped, or this one left
        self.shown_all = asyncio.Event()  # ended, and ``take`` gave out everything queued

    def feed(self, data: bytes) -> None:
        if self.ended:
            return
        if self._waiting and not self._chunks and self.show is not None:
            try:
                if self.show(data):
                    return
            except Exception:  # noqa: S110 - never into the owner's relay: ``take`` sends it
                pass
        self._chunks.append(data)
        self._size += len(data)
        if self._size > FOLLOW_BACKLOG:
            self.cut.set()
            self.end()
        self._changed.set()

    async def take(self) -> bytes | None:
        """The next chunk; None once ended and empty (``cut`` says if it was cut off)."""
        while not self._chunks:
            if self.ended:
                self.shown_all.set()
                return None
            self._changed.clear()
            self._waiting = True
            try:
                await self._changed.wait()
            finally:
                self._waiting = False
        data = self._chunks.popleft()
        self._size -= len(data)
        return data

    def end(self) -> None:
        """Nothing more, and what waits is not sent (cut off, or this relay stopped)."""
        self._chunks.clear()
        self._size = 0
        self.finish()

    def finish(self) -> None:
        """Nothing more comes; what waits is still ``take``'s; the scrollback forgets it."""
        self.ended = True
        self.show = None
        self._changed.set()
        if self in self._followers:
            self._followers.remove(self)


# The tails of the shells whose owner's relay runs in this process, by session id.
_tails: dict[str, Scrollback] = {}


def keep_tail(session_id: str) -> Scrollback:
    """A new tail for ``session_id``'s shell, found by ``follow`` until dropped."""
    tail = _tails[session_id] = Scrollback()
    return tail


def drop_tail(session_id: str, tail: Scrollback) -> None:
    tail.close()
    if _tails.get(session_id) is tail:
        del _tails[session_id]


def follow(session_id: str) -> tuple[bytes, Follower] | None:
    """The recent output of ``session_id``'s shell and a follower of what comes
    next (None if its owner's relay is not running here)."""
    tail = _tails.get(session_id)
    return None if tail is None else tail.follow()


def tail_of(session_id: str) -> bytes:
    """The recent output of ``session_id``'s shell (nothing if its owner's relay
    is not running here)."""
    tail = _tails.get(session_id)
    return b"" if tail is None else tail.tail()
