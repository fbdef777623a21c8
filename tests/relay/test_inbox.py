"""The broker's end of a session channel (``relay/inbox.py``): what the agent sent,
taken in order and batched, the end only after the last byte, and flow control
(reading paused above ``high`` queued bytes, resumed below ``low``).

The channel is a stand-in that records pause/resume: the inbox's own logic is
what is tested here; the relay tests drive it through real tunnels.
"""

from __future__ import annotations

import asyncio

import asyncssh

from allowhelp.broker.relay.inbox import ChannelInbox


class Channel:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def inbox(high: int = 100, low: int = 40) -> tuple[ChannelInbox, Channel]:
    side = ChannelInbox(high=high, low=low, what="shell")
    chan = Channel()
    side.connection_made(chan)  # type: ignore[arg-type]
    return side, chan


async def test_chunks_come_out_in_order_batched_up_to_the_limit() -> None:
    side, _ = inbox(high=1000)
    for chunk in (b"ab", b"cd", b"ef", b"gh"):
        side.data_received(chunk, None)
    assert await side.take(4) == b"abcd"
    assert await side.take(100) == b"efgh"
    side.data_received(b"k", None)
    assert await side.take(100) == b"k"  # a lone echo, as it came


async def test_a_waiting_take_is_woken_by_data_and_the_end_comes_after_the_last_byte() -> None:
    side, _ = inbox()
    waiting = asyncio.ensure_future(side.take(100))
    await asyncio.sleep(0)
    assert not waiting.done()
    side.data_received(b"echo", None)
    assert await waiting == b"echo"
    side.data_received(b"last", None)
    side.connection_lost(None)
    assert await side.take(100) == b"last"
    assert await side.take(100) is None
    assert await side.take(100) is None  # and stays ended
    waiting = asyncio.ensure_future(side.take(100))
    assert await waiting is None


async def test_a_take_waiting_at_the_end_returns_none_and_stderr_stays_apart() -> None:
    side, _ = inbox()
    waiting = asyncio.ensure_future(side.take(100))
    await asyncio.sleep(0)
    side.data_received(b"allowhelp: no shell here", asyncssh.EXTENDED_DATA_STDERR)
    side.connection_lost(None)
    assert await waiting is None
    assert side.failure() == "no shell here"


async def test_reading_pauses_above_high_and_resumes_below_low() -> None:
    side, chan = inbox(high=100, low=40)
    for _ in range(11):
        side.data_received(b"x" * 10, None)  # 110 queued: over high
    assert chan.calls == ["pause"]
    assert side.queued == 110
    assert await side.take(60) == b"x" * 60  # 50 left: not below low yet
    assert chan.calls == ["pause"]
    assert await side.take(20) == b"x" * 20  # 30 left: below low
    assert chan.calls == ["pause", "resume"]
    assert side.queued == 30


async def test_a_cancelled_take_leaves_the_inbox_usable() -> None:
    side, _ = inbox()
    waiting = asyncio.ensure_future(side.take(100))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    side.data_received(b"later", None)
    assert await side.take(100) == b"later"
