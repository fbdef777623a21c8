"""AgentLink keeps nothing per idle agent, yet dispatches in order and stops floods."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from allowhelp.broker.tunnel import link as agentlink
from allowhelp.broker.tunnel.link import QUEUE_LIMIT, AgentLink, Ready
from allowhelp.protocol.control import Message, SessionEnd


class FakeChannel:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeConn:
    """Just what AgentLink calls on an ``SSHClientConnection``."""

    def __init__(self) -> None:
        self.closed = False
        self.channel = FakeChannel()

    async def create_session(self, factory: Any, **kwargs: Any) -> tuple[FakeChannel, Any]:
        return self.channel, factory()

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def end(n: int) -> SessionEnd:
    return SessionEnd(session_id=f"s{n}", reason="user")


def make_link(dispatch: agentlink.Dispatcher) -> tuple[AgentLink, FakeConn]:
    conn = FakeConn()
    return AgentLink("agent-1", conn, dispatch), conn  # type: ignore[arg-type]


def test_messages_are_dispatched_in_order_and_the_worker_goes_away() -> None:
    seen: list[str] = []

    async def dispatch(agent_id: str, message: Message) -> None:
        await asyncio.sleep(0)  # a dispatcher that yields, so messages pile up
        assert isinstance(message, SessionEnd)
        seen.append(message.session_id)

    async def main() -> None:
        link, _ = make_link(dispatch)
        link.received(end(0))  # before the channel is open: kept, not dispatched
        await asyncio.sleep(0.01)
        assert seen == []
        await link.open()
        assert link.ready.is_set()
        for n in range(1, 5):
            link.received(end(n))
        await asyncio.sleep(0.05)
        assert seen == [f"s{n}" for n in range(5)]
        assert link._worker is None and link._inbox is None  # idle: nothing held
        link.received(end(5))  # a later message starts a fresh worker
        await asyncio.sleep(0.05)
        assert seen[-1] == "s5"
        assert link._worker is None

    asyncio.run(main())


def test_a_failing_dispatch_does_not_stop_the_next_message() -> None:
    seen: list[str] = []

    async def dispatch(agent_id: str, message: Message) -> None:
        assert isinstance(message, SessionEnd)
        seen.append(message.session_id)
        if message.session_id == "s0":
            raise RuntimeError("boom")

    async def main() -> None:
        link, conn = make_link(dispatch)
        await link.open()
        link.received(end(0))
        link.received(end(1))
        await asyncio.sleep(0.05)
        assert seen == ["s0", "s1"]
        assert not conn.closed

    asyncio.run(main())


def test_a_flood_over_the_limit_closes_the_tunnel() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def dispatch(agent_id: str, message: Message) -> None:
        await release.wait()
        assert isinstance(message, SessionEnd)
        seen.append(message.session_id)

    async def main() -> None:
        link, conn = make_link(dispatch)
        await link.open()
        link.received(end(0))
        await asyncio.sleep(0)  # the worker takes the first one
        for n in range(1, QUEUE_LIMIT + 1):
            link.received(end(n))
        assert not conn.closed  # QUEUE_LIMIT waiting is allowed
        link.received(end(QUEUE_LIMIT + 1))
        assert conn.closed
        release.set()
        await asyncio.sleep(0.01)
        assert seen == []  # the worker was cancelled with the tunnel
        link.received(end(999))  # after close: ignored
        await asyncio.sleep(0.01)
        assert seen == []

    asyncio.run(main())


def test_ready_wakes_every_waiter_and_a_timeout_does_not_disturb_others() -> None:
    async def main() -> None:
        ready = Ready()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ready.wait(), 0.01)
        waiters = [asyncio.create_task(ready.wait()) for _ in range(3)]
        impatient = asyncio.create_task(asyncio.wait_for(ready.wait(), 0.01))
        await asyncio.sleep(0.05)
        assert impatient.done() and isinstance(impatient.exception(), TimeoutError)
        assert not any(w.done() for w in waiters)
        ready.set()
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        await asyncio.wait_for(ready.wait(), 1)  # already set: returns at once
        assert ready.is_set()

    asyncio.run(main())
