"""A non-blocking file descriptor bridged to an SSH channel, with flow control both ways.

Shared by the shell (a PTY master) and the screen (a socketpair to x11vnc).
Output: when the channel's send buffer fills, ``pause`` stops reading the fd,
so the program blocks on its own writes. Input: what the fd cannot take yet
is kept (bounded) and the channel stops being read until it drains.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Protocol

# A socket (the screen) hands out what is queued: 256 KiB is two 128 KiB SSH
# packets per wake-up. A PTY hands out at most ~4 KiB per read; gather what is
# ready into one SSH packet instead of one packet (and one encryption) per read.
READ_SIZE = 256 * 1024
GATHER_READS = 16
# A read this short took all there was (a keystroke's echo, a prompt): the next
# would only say EAGAIN, a syscall and an exception per echo. Whatever comes
# later wakes the loop again (add_reader is level-triggered).
SHORT_READ = 1024
MAX_PENDING_INPUT = 256 * 1024


class Output(Protocol):
    """Where the program's output goes (the SSH channel)."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FdBridge:
    def __init__(self, fd: int, output: Output, on_eof: Callable[[], None]) -> None:
        self._fd = fd
        self._output = output
        self._on_eof = on_eof
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()
        self._reading = True
        self.closed = False
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO on a PTY: everything on the terminal is gone
        if data and len(data) < SHORT_READ:  # a keystroke's echo, a prompt: all there was
            self._output.write(data)
            return
        self._gather(data)

    def _gather(self, first: bytes) -> None:
        """What is ready after ``first`` (a long read, or b"" at the end), gathered
        into one write: one SSH packet, not one per read."""
        chunks, size, eof, reads = [first], len(first), not first, 1
        while (
            not eof and size < READ_SIZE and reads < GATHER_READS and len(chunks[-1]) >= SHORT_READ
        ):
            try:
                data = os.read(self._fd, READ_SIZE - size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""  # EIO on a PTY: everything on the terminal is gone
            reads += 1
            eof = not data
            chunks.append(data)
            size += len(data)
        if size:
            self._output.write(b"".join(chunks))
        if eof:
            self._on_eof()

    def pause(self) -> None:
        if self._reading and not self.closed:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._pending:  # nothing waiting (so the channel is not paused): write it now
            try:
                written = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                return  # the terminal is gone: what was typed goes nowhere (as in _flush)
            if written == len(data):
                return
            data = data[written:]
        self._pending += data
        self._flush()
        if len(self._pending) > MAX_PENDING_INPUT:
            self._output.pause_reading()

    def _flush(self) -> None:
        try:
            written = os.write(self._fd, self._pending) if self._pending else 0
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            self._pending.clear()
            return
        del self._pending[:written]
        if self._pending:
            self._loop.add_writer(self._fd, self._writable)
        else:
            self._output.resume_reading()

    def _writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._flush()

    def stop(self) -> None:
        """Stop watching the fd (the owner closes it); safe to call again."""
        if self.closed:
            return
        self.closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
