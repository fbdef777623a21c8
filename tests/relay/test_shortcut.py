"""The terminal's shortcut (``relay/fastws.py``): keystrokes written to the channel in the
WebSocket protocol's callback, echoes recorded and sent in the SSH session's
callback, while nothing waits; else through the relay's tasks, as before.

Real parts: uvicorn serving a starlette app on 127.0.0.1 with the console's
WebSocket protocol, a :class:`TerminalRelay` with a real recorder in a temporary
folder, a real asyncssh server whose shell is ``cat`` (and a flood on ``F``), a
real WebSocket client. What the broker writes to the file (``os.pwrite``) and to
the browser's socket (its transport's ``write``) is logged in order, to check that
every byte shown was in the recording file first.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from catshellkit import FLOOD
from shortcutkit import (
    KEYS,
    Counting,
    Stack,
    assert_recorded_before_shown,
    echoed,
    flood_held_back,
    record_log,
    serving,
    stack,
)
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from allowhelp.broker.audit.recording import AsciicastRecorder
from allowhelp.broker.relay.scrollback import Scrollback, tail_of


async def test_keystrokes_and_echoes_go_the_short_way_recorded_before_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_log(monkeypatch)
    async with stack(tmp_path) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        keys = KEYS * 10
        for key in keys:
            await ws.send(bytes([key]))
            assert await echoed(ws, 1) == bytes([key])
        (proto,) = Counting.made
        # all but the first key (it may come before the channel is open) and the first
        # echoes (they wait for the writer thread, until the disk proved fast)
        assert proto.taken >= len(keys) - 1 and proto.sent_now >= len(keys) - 10
        assert proto.parsed <= 1  # read by the protocol itself, not websockets' parser
        assert assert_recorded_before_shown(Counting.log) == len(keys)
        (relay,) = made.relays
        assert relay.counters.to_agent == relay.counters.from_agent == len(keys)


async def test_a_burst_with_resizes_between_stays_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keystrokes sent without waiting, resizes among them: some queue for the
    relay's task, some take the shortcut; what comes back is what was sent."""
    record_log(monkeypatch)
    async with stack(tmp_path) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        keys = KEYS * 100
        for n, key in enumerate(keys):
            await ws.send(bytes([key]))
            if n % 500 == 0:
                await ws.send(json.dumps({"type": "resize", "cols": 90 + n % 7, "rows": 30}))
        got = await echoed(ws, len(keys))
        assert not made.outcomes, made.outcomes
        assert got == keys
        assert assert_recorded_before_shown(Counting.log) == len(keys)
        (relay,) = made.relays
        assert relay.counters.to_agent == len(keys)


async def test_a_browser_that_does_not_read_holds_the_flood_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: the browser's socket fills, the transport pauses, the shortcut
    stands aside and the relay's task waits; the broker holds a bounded amount."""
    record_log(monkeypatch)
    async with (
        stack(tmp_path) as made,
        connect(f"ws://127.0.0.1:{made.port}/t", max_size=None, max_queue=1) as ws,
    ):
        await ws.send(b"k")
        assert await echoed(ws, 1) == b"k"
        (proto,) = Counting.made
        (relay,) = made.relays
        await flood_held_back(ws, proto, lambda: relay.factory().queued)
        await ws.send(b"z")  # and the shortcut is back
        assert await echoed(ws, 1) == b"z"
        assert assert_recorded_before_shown(Counting.log) == FLOOD + 2


async def test_the_scrollback_holds_only_what_the_recording_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner gets the shell's recent output: never what the owner's relay has not
    recorded yet (a flood queued behind a browser that does not read), which an end
    now would leave out of the recording for good. Counted in bytes: the flood
    repeats itself, so comparing the bytes would not tell."""
    recorded, kept = [0], [0]
    output, add = AsciicastRecorder.output, Scrollback.add

    def recording(self: AsciicastRecorder, data: bytes) -> None:
        output(self, data)
        if not self.closed:
            recorded[0] += len(data)

    def keeping(self: Scrollback, data: bytes) -> None:
        add(self, data)
        kept[0] += len(data)

    monkeypatch.setattr(AsciicastRecorder, "output", recording)
    monkeypatch.setattr(Scrollback, "add", keeping)
    async with (
        stack(tmp_path, session_id="s") as made,
        connect(f"ws://127.0.0.1:{made.port}/t", max_size=None, max_queue=1) as ws,
    ):
        await ws.send(b"k")
        assert await echoed(ws, 1) == b"k"
        (proto,) = Counting.made
        (relay,) = made.relays
        await ws.send(b"F")
        for _ in range(1000):  # the browser's socket full, the flood queued at the broker
            if not proto.writable.is_set() and relay.factory().queued:
                break
            await asyncio.sleep(0.01)
        assert relay.factory().queued > 0
        assert tail_of("s")
        assert 0 < kept[0] <= recorded[0]


async def test_the_protocol_hands_over_only_what_nothing_waits_before() -> None:
    """A binary message behind one the application has not read yet is queued
    behind it, not taken; one the hook declines is queued; after the close
    nothing is sent the short way."""
    taken: list[bytes] = []
    declined = {b"no"}
    go = asyncio.Event()
    got: list[Any] = []

    asked: list[bytes] = []

    def take(data: bytes) -> bool:
        asked.append(data)
        if data in declined:
            return False
        taken.append(data)
        return True

    async def app(websocket: WebSocket) -> None:
        await websocket.accept()
        (proto,) = Counting.made
        proto.take_bytes = take
        await go.wait()  # the application reads only now
        for _ in range(3):
            got.append(await asyncio.wait_for(websocket.receive(), 10))
        assert proto.send_bytes_now(b"now")
        await websocket.close()
        assert not proto.send_bytes_now(b"after the close")

    routes = Starlette(routes=[WebSocketRoute("/t", app)])
    async with serving(routes, Counting, ws_per_message_deflate=False) as port:  # as node/front.py
        Counting.log, Counting.made = [], []
        try:
            async with connect(f"ws://127.0.0.1:{port}/t") as ws:
                await ws.send("resize")  # text: for the application
                await ws.send(b"x")  # behind it: queued, not taken
                for _ in range(100):
                    if Counting.made and Counting.made[0].queue.qsize() == 2:
                        break
                    await asyncio.sleep(0.01)
                assert taken == []
                go.set()
                for _ in range(1000):
                    if len(got) >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert [m.get("text") or m.get("bytes") for m in got] == ["resize", b"x"]
                await ws.send(b"y")  # nothing queued: taken
                for _ in range(1000):  # before what follows: each alone in its read
                    if taken:
                        break
                    await asyncio.sleep(0.01)
                await ws.send(b"no")  # declined: queued for the application
                assert await asyncio.wait_for(ws.recv(), 10) == b"now"
            assert taken == [b"y"]
            assert asked.count(b"no") == 1  # declined once, not asked again by the parser's path
            assert [m.get("text") or m.get("bytes") for m in got] == ["resize", b"x", b"no"]
        finally:
            go.set()


async def bang_ends_the_relay_not_the_tunnel(made: Stack) -> None:
    """Keys echoed, then ``!`` (what the test breaks on): not shown, the relay ends
    (one outcome), and the agent's tunnel lives on (a new session opens on it)."""
    async with connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        for key in KEYS:
            await ws.send(bytes([key]))
            assert await echoed(ws, 1) == bytes([key])
        await ws.send(b"!")
        with pytest.raises(ConnectionClosed):
            await echoed(ws, 1)  # not shown; the relay ends
    assert len(made.outcomes) == 1
    assert not made.ssh.is_closed()  # the tunnel lives on
    chan, _ = await made.ssh.create_session(asyncssh.SSHClientSession, encoding=None)
    chan.close()


async def test_a_recorder_that_breaks_in_the_shortcut_ends_the_relay_not_the_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the SSH session's callback would end asyncssh's whole
    connection (every session of that PC): the relay's task raises it instead."""
    output = AsciicastRecorder.output

    def breaking(self: AsciicastRecorder, data: bytes) -> None:
        if data == b"!":
            raise RuntimeError("the recorder broke")
        output(self, data)

    monkeypatch.setattr(AsciicastRecorder, "output", breaking)
    async with stack(tmp_path) as made:
        await bang_ends_the_relay_not_the_tunnel(made)


async def test_a_scrollback_that_breaks_ends_the_relay_not_the_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell's scrollback is fed in the SSH session's callback too (an echo
    shown there): an error there would end asyncssh's whole connection (every
    session of that PC); the relay ends with it as its error instead."""
    add = Scrollback.add

    def breaking(self: Scrollback, data: bytes) -> None:
        if data == b"!":
            raise MemoryError("the scrollback broke")
        add(self, data)

    monkeypatch.setattr(Scrollback, "add", breaking)
    async with stack(tmp_path, session_id="s") as made:
        await bang_ends_the_relay_not_the_tunnel(made)
        assert made.outcomes[0].reason == "error", made.outcomes
        failure = made.outcomes[0].failure
        assert failure is not None and "scrollback broke" in repr(failure.__cause__)
