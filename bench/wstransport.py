"""Lever ``wstransport`` (broker only): the HTTPS route without the socketpair, to measure it.

    bench/run --only routes --lever wstransport

Today the broker's ``/api/v1/tunnel`` endpoint bridges WebSocket messages to a
socketpair and asyncssh runs on the other end (``allowhelp/wsbridge.py``):
three file descriptors per agent and two copies through the kernel. This lever
replaces, inside the broker process only, the endpoint with one that hands
asyncssh's protocol an asyncio transport over the WebSocket itself:
``write()`` queues bytes that one sender task coalesces into binary messages
(as the bridge's ``sock_recv`` of up to 256 KiB does), each received message
goes straight to ``data_received``, and ``pause_writing``/``resume_writing``
tell asyncssh when the WebSocket falls behind (asyncssh's channel windows do
the rest, as on a TCP socket). The handshake, key check, admission control
and audit are the listener's own (``_handshake`` is followed line by line,
minus ``create_connection(sock=...)``). The agent side is unchanged.

An experiment for the proposal in docs/benchmarks.md §6, not product code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import asyncssh
from starlette.websockets import WebSocket, WebSocketDisconnect

from allowhelp.broker.console.answers import CloseCode
from allowhelp.broker.console.api import tunnel_socket as endpoint
from allowhelp.broker.console.api.base import services
from allowhelp.broker.tunnel import listener as tunnel_listener
from allowhelp.broker.tunnel.listener import TunnelListener
from allowhelp.wsbridge import CHUNK, SUBPROTOCOL

HIGH_WATER = 1024 * 1024  # queued bytes at which asyncssh is asked to pause
LOW_WATER = 256 * 1024


class WebSocketTransport(asyncio.Transport):
    def __init__(self, websocket: WebSocket, peer: tuple[str, int]) -> None:
        super().__init__({"peername": peer})
        self._ws = websocket
        self._protocol: asyncio.Protocol | None = None
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._paused = False
        self._lost = False
        self._early: list[bytes] = []

    # --- what asyncssh calls -----------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wake.set()
        if not self._paused and self._queued > HIGH_WATER and self._protocol is not None:
            self._paused = True
            self._protocol.pause_writing()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._queue.clear()
        self._queued = 0
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._queued

    # --- the two loops ---------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                parts = []
                size = 0
                while self._queue and size < CHUNK:
                    part = self._queue.popleft()
                    parts.append(part)
                    size += len(part)
                self._queued -= size
                await self._ws.send_bytes(parts[0] if len(parts) == 1 else b"".join(parts))
                if self._paused and self._queued < LOW_WATER and self._protocol is not None:
                    self._paused = False
                    self._protocol.resume_writing()
            if self._closing:
                with contextlib.suppress(Exception):
                    await self._ws.close(CloseCode.NORMAL)
                return

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Start ``protocol`` on this transport, with what arrived before it."""
        self._protocol = protocol
        protocol.connection_made(self)
        early, self._early = self._early, []
        for data in early:
            if not self._closing:
                protocol.data_received(data)

    async def run(self) -> None:
        """Feed received messages to the protocol and send what it writes, until either
        side ends; then tell the protocol the connection is lost (once)."""
        sender = asyncio.create_task(self._send_loop())
        try:
            while True:
                try:
                    message = await self._ws.receive()
                except (WebSocketDisconnect, RuntimeError):
                    break
                data = message.get("bytes") if message["type"] == "websocket.receive" else None
                if data is None:
                    break
                if self._protocol is None:
                    self._early.append(data)  # the handshake task has not started yet
                elif not self._closing:
                    self._protocol.data_received(data)
        finally:
            self._closing = True
            self._wake.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(sender, 5)
            if not self._lost and self._protocol is not None:
                self._lost = True
                self._protocol.connection_lost(None)


async def _handshake_on(
    self: TunnelListener, transport: WebSocketTransport, address: str, peer: str
) -> None:
    """``TunnelListener._handshake`` with the transport in place of a socket."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    conn: asyncssh.SSHClientConnection | None = None
    try:
        conn = self._start_client(loop, finished, address)
        transport.attach(conn)
        await finished
    except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
        self._handshake_lost(conn, address, peer, exc)
        if conn is not None:
            conn.abort()
        else:
            transport.abort()
        return
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    finally:
        self._admission.done(address)
    self.handshakes_succeeded += 1
    await self._accepted(conn)


async def _admit_transport(
    self: TunnelListener, transport: WebSocketTransport, address: str, peer: str
) -> None:
    await self._admission.room.wait()
    if not self._admission.admit(address):
        self.dropped += 1
        transport.abort()
        return
    await _handshake_on(self, transport, address, peer)


async def tunnel_socket(websocket: WebSocket) -> None:
    """The endpoint of ``tunnel_socket.py``, the same checks, no socketpair."""
    if "origin" in websocket.headers or SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
        await websocket.close(CloseCode.POLICY)
        return
    svc = services(websocket)
    client = websocket.client
    address = client.host if client else "?"
    port = client.port if client else 0
    await websocket.accept(subprotocol=SUBPROTOCOL)
    transport = WebSocketTransport(websocket, (address, port))
    listener: Any = svc.tunnel
    if listener._options_built is None or listener._stopping:
        await websocket.close(CloseCode.NORMAL)
        return
    listener._spawn(_admit_transport(listener, transport, address, f"{address}:{port} (https)"))
    await transport.run()


def install() -> None:
    """Swap the endpoint before the broker builds its app (``bench.launch``)."""
    endpoint.tunnel_socket = tunnel_socket
    assert tunnel_listener.TunnelListener is TunnelListener
