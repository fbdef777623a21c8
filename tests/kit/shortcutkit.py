"""The console's protocol with its shortcuts (``relay/fastws.py``), counting them,
serving a terminal relay on 127.0.0.1 in front of a ``cat`` shell over real
asyncssh; what the broker writes to the recording file and to the browser's
socket logged in order (``tests/relay/test_shortcut*.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import asyncssh
import pytest
import uvicorn
from catshellkit import FLOOD, cat_over_ssh
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection

from allowhelp.broker.audit.recording import AsciicastRecorder
from allowhelp.broker.audit.recording_file import RecordingLimits
from allowhelp.broker.relay.fastws import ShortcutWebSocketProtocol
from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.relay.terminal import TerminalRelay

KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"  # no F: that asks for the flood
Log = list[tuple[str, bytes]]


class Spy:
    """Delegates to the transport; logs what is written to it."""

    def __init__(self, transport: Any, log: Log) -> None:
        self._transport, self._log = transport, log

    def write(self, data: bytes) -> None:
        self._log.append(("net", bytes(data)))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountedShortcuts(ShortcutWebSocketProtocol):
    """The console's protocol, counting its doors: ``taken`` (offered to the relay
    and taken), ``parsed`` (binary frames websockets' parser read, not the
    protocol itself), ``sent_now`` (echoes framed at once). Each subclass keeps
    the protocols it made in its own ``made``."""

    made: ClassVar[list[Any]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.taken = self.sent_now = self.parsed = 0
        type(self).made.append(self)

    def handle_bytes(self, event: Any) -> None:
        self.parsed += 1
        super().handle_bytes(event)

    def offer(self, data: bytes) -> bool:
        took = super().offer(data)
        self.taken += took
        return took

    def frame_now(self, data: bytes) -> None:
        super().frame_now(data)
        self.sent_now += 1


class Counting(CountedShortcuts):
    """Counting, and its transport spied on (``log``: what went to the browser)."""

    log: ClassVar[Log] = []
    made: ClassVar[list[Any]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.transport = Spy(self.transport, Counting.log)  # type: ignore[assignment]


@asynccontextmanager
async def serving(
    app: Starlette, protocol: type[CountedShortcuts], **options: Any
) -> AsyncIterator[int]:
    """``app`` served by uvicorn on 127.0.0.1 with ``protocol``; yields the port."""
    config = uvicorn.Config(
        app, ws=protocol, lifespan="off", log_config=None, timeout_graceful_shutdown=1, **options
    )
    web = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(web.serve(sockets=[sock]))
    while not web.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        web.should_exit = True
        await task


@dataclass
class Stack:
    port: int
    ssh: asyncssh.SSHClientConnection
    relays: list[TerminalRelay] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@asynccontextmanager
async def stack(folder: Path, session_id: str = "") -> AsyncIterator[Stack]:
    closing = contextlib.AsyncExitStack()  # the cat server and its client, last
    ssh = await closing.enter_async_context(cat_over_ssh())
    made = Stack(0, ssh)

    async def terminal(websocket: WebSocket) -> None:
        await websocket.accept()
        recorder = AsciicastRecorder(
            folder, "s", 80, 24, title="t", limits=RecordingLimits(min_free=0)
        )
        relay = TerminalRelay(websocket, recorder, (80, 24), session_id=session_id)
        made.relays.append(relay)
        chan, _ = await ssh.create_session(relay.factory, encoding=None)
        made.outcomes.append(await relay.run(chan))
        with contextlib.suppress(Exception):  # the browser may have gone first
            await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/t", terminal)])
    async with serving(app, Counting, ws_per_message_deflate=False) as port:  # as node/front.py
        made.port = port
        Counting.log, Counting.made = [], []
        try:
            yield made
        finally:
            await closing.aclose()


def record_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log the recording's writes (on the loop and in the writer threads)."""
    real: Callable[[int, Any, int], int] = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        written = real(fd, data, offset)
        Counting.log.append(("disk", bytes(data)[:written]))
        return written

    def pwritev(fd: int, chunks: Any, offset: int) -> int:
        data = b"".join(chunks)
        written = real(fd, data, offset)
        Counting.log.append(("disk", data[:written]))
        return written

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "pwritev", pwritev)


def shown_lengths(data: bytes) -> int:
    """Payload bytes of the server's binary frames in one transport write."""
    total, at = 0, 0
    while at < len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        total += size if opcode == 2 else 0
        at += size
    return total


def recorded_length(data: bytes) -> int:
    """Output bytes in the cast lines of one file write (UTF-8 of the ``o`` texts)."""
    total = 0
    for line in data.splitlines():
        event = json.loads(line)
        if isinstance(event, list) and event[1] == "o":
            total += len(event[2].encode())
    return total


def assert_recorded_before_shown(log: Log) -> int:
    """At every write to the browser, all it has been sent is in the file; the total."""
    recorded = shown = 0
    for n, (where, data) in enumerate(log):
        if where == "disk":
            recorded += recorded_length(data)
        elif not data.startswith(b"HTTP/"):
            shown += shown_lengths(data)
            assert shown <= recorded, f"{shown} shown, {recorded} recorded: {log[: n + 1][-6:]}"
    return shown


async def echoed(ws: ClientConnection, size: int) -> bytes:
    got = b""
    while len(got) < size:
        frame = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(frame, bytes)
        got += frame
    return got


async def flood_held_back(
    ws: ClientConnection, proto: CountedShortcuts, queued: Callable[[], int]
) -> None:
    """After ``F`` (the far end's flood) to a browser that does not read: its socket
    fills, the transport pauses and stays so, the broker holding under 2 MiB (what
    the transport keeps plus ``queued``: the relay's inbox); then the whole flood."""
    await ws.send(b"F")
    for _ in range(1000):  # the browser's socket full, the transport paused
        if not proto.writable.is_set():
            break
        await asyncio.sleep(0.01)
    assert not proto.writable.is_set()
    for _ in range(5):  # and it stays so: the flood waits at the far end
        await asyncio.sleep(0.05)
        assert proto.transport.get_write_buffer_size() + queued() < 2 * 1024 * 1024
    assert not proto.writable.is_set()
    block = bytes(range(256)) * 256
    assert await echoed(ws, FLOOD) == block * (FLOOD // len(block))
