"""The broker's end of one session channel: what the agent sends, queued with flow control.

Reading stops above ``high`` queued bytes and resumes below ``low``: that is
what makes a slow browser slow the PC down instead of filling memory. The
agent reports a channel that cannot start on stderr and exit status; that
text never reaches the browser as data and becomes the failure reason.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import asyncssh

from allowhelp.protocol.text import plain_text

MAX_STDERR = 4096


class ChannelInbox(asyncssh.SSHClientSession[bytes]):
    """The agent's side of one channel: data queued for the browser, stderr kept apart.

    Reading stops above ``high`` queued bytes and resumes below ``low``: that
    is what makes a slow browser slow the PC down instead of filling memory.
    The agent reports a channel that cannot start on stderr and exit status;
    that text never reaches the browser as data and becomes the failure reason.
    """

    def __init__(self, *, high: int, low: int, what: str) -> None:
        # What came, in order, for ``take``; a deque and one waiter, not an
        # asyncio.Queue: its get/put cost showed per keystroke (docs/benchmarks.md §7f).
        self.outbox: deque[bytes] = deque()
        self._ended = False  # the channel closed: ``take`` returns None once outbox is empty
        self._dropped = False  # the relay stopped: ``take`` returns None, whatever is queued
        self._waiter: asyncio.Future[None] | None = None
        self.queued = 0
        self.stderr = bytearray()
        self.exit_status: int | None = None
        self.closed_by: Exception | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        # Takes the data at once while ``take``'s caller waits for it with nothing
        # queued (the terminal's echo, ``fastws.py``); may decline (False).
        self.show: Callable[[bytes], bool] | None = None
        self._nudged = False
        self._high, self._low, self._what = high, low, what

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data[: max(0, MAX_STDERR - len(self.stderr))]
            return
        if (
            self.show is not None
            and self._waiter is not None
            and not self.outbox
            and not self._nudged
            and self.show(data)
        ):
            return
        self.outbox.append(data)
        self.queued += len(data)
        self._wake()
        if self.queued > self._high and self.chan is not None:
            self.chan.pause_reading()

    def drop(self) -> None:
        """The relay stopped (the session ended, or its page left): what is queued and
        what still comes is never shown, nor recorded; ``take`` returns None now."""
        self._dropped = True
        self.show = None
        self.outbox.clear()
        self.queued = 0
        self._wake()

    def nudge(self) -> None:
        """Make ``take`` return ``b""`` once, before anything queued after this."""
        self._nudged = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, limit: int) -> bytes | None:
        """Everything queued, up to about ``limit`` bytes in one frame; None at the
        end (or once dropped); ``b""`` once after a ``nudge``."""
        outbox = self.outbox
        while not outbox or self._dropped:
            if self._dropped:
                return None
            if self._nudged:
                self._nudged = False
                return b""
            if self._ended:
                return None
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self._nudged = False  # the caller looks at what it was nudged for first
        data = outbox.popleft()
        if not outbox:
            chunks, size = None, len(data)
        else:
            chunks, size = [data], len(data)
            while size < limit and outbox:
                more = outbox.popleft()
                chunks.append(more)
                size += len(more)
        self.queued -= size
        if self.queued < self._low and self.chan is not None:
            self.chan.resume_reading()
        return data if chunks is None else b"".join(chunks)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_by = exc
        self.writable.set()
        self._ended = True
        self._wake()

    @property
    def agent_lost(self) -> bool:
        return isinstance(self.closed_by, (asyncssh.ConnectionLost, asyncssh.DisconnectError))

    def failure(self) -> str | None:
        """What the agent said went wrong, if anything."""
        text = " ".join(
            plain_text(line, 300) for line in self.stderr.decode("utf-8", "replace").splitlines()
        ).strip()
        text = text.removeprefix("allowhelp:").strip()
        if text:
            return text[:300]
        if self.exit_status not in (None, 0) and self.queued == 0 and not self.outbox:
            return f"the {self._what} stopped (status {self.exit_status})"
        return None
