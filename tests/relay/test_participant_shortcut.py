"""An invitee's terminal relay (``relay/participant.py``) takes the owner's shortcut
(``relay/fastws.py``): keystrokes written to (or, from an observer, dropped before)
the channel in the WebSocket protocol's callback, echoes sent in the SSH session's
callback, while nothing waits; the catch-up first; order and backpressure kept.

Real parts: uvicorn serving a starlette app on 127.0.0.1 with the console's
WebSocket protocol, a real asyncssh server whose shell is ``cat`` (and a flood on
``F``), a real WebSocket client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from catshellkit import cat_over_ssh
from shortcutkit import KEYS, CountedShortcuts, echoed, flood_held_back, serving
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.relay.participant import ParticipantTerminalRelay
from allowhelp.broker.relay.scrollback import drop_tail, keep_tail


class Counting(CountedShortcuts):
    made: ClassVar[list[Any]] = []


@dataclass
class Stack:
    port: int
    relays: list[ParticipantTerminalRelay] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@asynccontextmanager
async def stack(may_type: bool, session_id: str = "") -> AsyncIterator[Stack]:
    closing = contextlib.AsyncExitStack()  # the cat server and its client, last
    ssh = await closing.enter_async_context(cat_over_ssh())
    made = Stack(0)

    async def terminal(websocket: WebSocket) -> None:
        await websocket.accept()
        relay = ParticipantTerminalRelay(
            websocket, "shell", (80, 24), may_type=may_type, session_id=session_id
        )
        made.relays.append(relay)
        chan, _ = await ssh.create_session(relay.factory, encoding=None)
        made.outcomes.append(await relay.run(chan))

    app = Starlette(routes=[WebSocketRoute("/t", terminal)])
    async with serving(app, Counting, ws_per_message_deflate=False) as port:
        made.port = port
        Counting.made = []
        try:
            yield made
        finally:
            await closing.aclose()


async def test_a_controllers_keystrokes_and_echoes_go_the_short_way_after_the_catch_up() -> None:
    earlier = keep_tail("s")
    earlier.add(b"before you joined\r\n")
    try:
        async with stack(True, "s") as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
            assert await echoed(ws, 19) == b"before you joined\r\n"  # first
            keys = KEYS * 10
            for key in keys:
                await ws.send(bytes([key]))
                assert await echoed(ws, 1) == bytes([key])
            (proto,) = Counting.made
            assert proto.taken >= len(keys) - 1 and proto.sent_now >= len(keys) - 2
            assert proto.parsed <= 1  # read by the protocol itself, not websockets' parser
            (relay,) = made.relays
            assert relay.counters.to_agent == relay.counters.from_agent == len(keys)
    finally:
        drop_tail("s", earlier)


async def test_an_observers_keystrokes_stop_at_the_broker_on_the_short_way_too() -> None:
    async with stack(False) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        for _ in range(1000):
            if made.relays and made.relays[0]._chan is not None:
                break
            await asyncio.sleep(0.01)
        (relay,) = made.relays
        for n, key in enumerate(KEYS, 1):
            await ws.send(bytes([key]))
            for _ in range(1000):
                if relay.dropped_input == n:
                    break
                await asyncio.sleep(0.001)
        (proto,) = Counting.made
        assert relay.dropped_input == len(KEYS) and relay.counters.to_agent == 0
        assert proto.taken == len(KEYS)
        try:
            got = await asyncio.wait_for(ws.recv(), 0.3)
        except TimeoutError:
            got = None
        assert got is None  # nothing reached the shell, nothing echoed


async def test_a_burst_stays_in_order() -> None:
    async with stack(True) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        keys = KEYS * 100
        for key in keys:
            await ws.send(bytes([key]))
        assert await echoed(ws, len(keys)) == keys
        assert not made.outcomes, made.outcomes


async def test_a_participant_who_does_not_read_holds_the_flood_back() -> None:
    async with (
        stack(True) as made,
        connect(f"ws://127.0.0.1:{made.port}/t", max_size=None, max_queue=1) as ws,
    ):
        await ws.send(b"k")
        assert await echoed(ws, 1) == b"k"
        (proto,) = Counting.made
        (relay,) = made.relays
        await flood_held_back(ws, proto, lambda: relay.factory().queued)
        await ws.send(b"z")  # and the shortcut is back
        assert await echoed(ws, 1) == b"z"
        assert proto.sent_now >= 2
