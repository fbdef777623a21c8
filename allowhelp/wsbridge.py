"""A WebSocket carried as a plain socket, for the tunnel on the HTTPS port.

Branch firewalls often let only HTTPS out, so the agent's SSH tunnel can also
ride a WebSocket on the console's port (``/api/v1/tunnel``). SSH inside is
exactly the SSH of the raw port: the same pinned keys, the same deny-by-default
server, the same code. That code takes a socket, so each end puts the
WebSocket's binary messages on one end of a ``socketpair`` and hands the other
end to asyncssh: the broker through its accept path, the agent through
``connect_reverse(sock=...)``. The cost is one copy per direction and two more
file descriptors per tunnel on each end (``bench --only routes`` measures it
against the raw port: docs/benchmarks.md §6).

Shared by both daemons (like ``runtime.py``): it knows nothing of either side.
The WebSocket library of each side is adapted to two callables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

SUBPROTOCOL = "allowhelp-tunnel.v1"  # both ends insist on it: no accidental peer
PATH = "/api/v1/tunnel"
CHUNK = 256 * 1024  # one SSH packet is at most 128 KiB plus framing
MAX_MESSAGE = 1024 * 1024  # the broker's WebSocket frame cap (console/wall.py's 1 MiB)

Receive = Callable[[], Awaitable[bytes | None]]  # None: the WebSocket is closed
Send = Callable[[bytes], Awaitable[None]]
Close = Callable[[], Awaitable[None]]


async def bridge(sock: socket.socket, receive: Receive, send: Send, close: Close) -> None:
    """Copy WebSocket messages into ``sock`` and what ``sock`` yields into messages,
    until either side ends; then end the other side too.

    The SSH end seeing EOF is how a dropped WebSocket reaches asyncssh, and the
    WebSocket closing is how an SSH disconnect reaches the peer.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def inbound() -> None:
        while (data := await receive()) is not None:
            await loop.sock_sendall(sock, data)

    async def outbound() -> None:
        while data := await loop.sock_recv(sock, CHUNK):
            await send(data)

    tasks = [asyncio.create_task(inbound()), asyncio.create_task(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
        with contextlib.suppress(Exception):
            await close()
    for result in results:
        if isinstance(result, Exception):
            log.debug("tunnel bridge ended: %s", result or type(result).__name__)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the bridge's end, asyncssh's end), both non-blocking, close-on-exec."""
    ours, theirs = socket.socketpair()
    for end in (ours, theirs):
        end.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, option, CHUNK)
    return ours, theirs
