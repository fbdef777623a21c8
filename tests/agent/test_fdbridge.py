"""The agent's fd ↔ channel bridge (``agent/fdbridge.py``) on a real PTY: input
written at once when the terminal takes it, kept (and the channel paused) when it
cannot, delivered whole and in order; output read and passed on, a short read
ending the gathering without losing what comes after.

The channel is a stand-in that records what it is given: the bridge and the PTY
are real; the shell tests drive both through real tunnels.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Iterator
from contextlib import contextmanager

from allowhelp.agent.fdbridge import MAX_PENDING_INPUT, FdBridge


class Channel:
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls: list[str] = []
        self.got = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


@contextmanager
def raw_pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing: bytes as they are
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def read_all(fd: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += os.read(fd, size - len(got))
    return bytes(got)


async def test_a_keystroke_goes_straight_to_the_terminal() -> None:
    with raw_pty() as (master, slave):
        chan = Channel()
        bridge = FdBridge(master, chan, lambda: None)
        bridge.write(b"k")
        assert os.read(slave, 16) == b"k"  # already there: no wait for the loop
        assert chan.calls == []  # nothing kept, nothing paused or resumed
        bridge.stop()


async def test_input_the_terminal_cannot_take_is_kept_in_order_and_pauses_the_channel() -> None:
    with raw_pty() as (master, slave):
        chan = Channel()
        bridge = FdBridge(master, chan, lambda: None)
        blob = bytes(range(256)) * ((MAX_PENDING_INPUT + 64 * 1024) // 256)
        bridge.write(blob)  # far more than a PTY holds: the rest is kept
        assert chan.calls == ["pause"]
        bridge.write(b"after")  # behind what is kept, not before it
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, read_all, slave, len(blob) + 5)
        assert got == blob + b"after"
        assert chan.calls[-1] == "resume"
        bridge.stop()


async def test_output_is_passed_on_and_a_short_read_loses_nothing_after_it() -> None:
    with raw_pty() as (master, slave):
        chan = Channel()
        bridge = FdBridge(master, chan, lambda: None)
        os.write(slave, b"k")
        await asyncio.wait_for(chan.got.wait(), 10)
        assert bytes(chan.data) == b"k"
        chan.got.clear()
        os.write(slave, b"second")
        await asyncio.wait_for(chan.got.wait(), 10)
        while len(chan.data) < 7:  # a PTY may hand it over in pieces
            chan.got.clear()
            await asyncio.wait_for(chan.got.wait(), 10)
        assert bytes(chan.data) == b"ksecond"
        bridge.stop()
