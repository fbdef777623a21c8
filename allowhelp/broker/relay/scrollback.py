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
"""

from __future__ import annotations

from collections import deque

TAIL_BYTES = 64 * 1024
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

    def add(self, data: bytes) -> None:
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

    def tail(self) -> bytes:
        data = b"".join(self._chunks)[self._skip :]
        clear = max(data.rfind(mark) for mark in CLEARS)
        if clear >= 0:  # the screen started again there
            return data[clear:]
        if self._cut:
            newline = data.find(b"\n")
            data = data[newline + 1 :] if newline >= 0 else data
        return data


# The tails of the shells whose owner's relay runs in this process, by session id.
_tails: dict[str, Scrollback] = {}


def keep_tail(session_id: str) -> Scrollback:
    """A new tail for ``session_id``'s shell, found by ``tail_of`` until dropped."""
    tail = _tails[session_id] = Scrollback()
    return tail


def drop_tail(session_id: str, tail: Scrollback) -> None:
    if _tails.get(session_id) is tail:
        del _tails[session_id]


def tail_of(session_id: str) -> bytes:
    """The recent output of ``session_id``'s shell (nothing if its owner's relay
    is not running here)."""
    tail = _tails.get(session_id)
    return b"" if tail is None else tail.tail()
