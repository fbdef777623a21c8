"""Every TCP connection to the console's port gets deadlines (``httpguard.tcp_deadlines``):
``TCP_USER_TIMEOUT`` and keepalive, so a PC that vanishes under a standing doorbell
(a response that only writes, every 20 s) is offline within a minute. The
broker's own HTTP protocol class on a real listening socket, a real client."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from uvicorn.server import ServerState

from allowhelp.broker.console.httpguard import KEEPALIVE, UNACKED_LIMIT, GuardedHttpProtocol


async def _app(scope: object, receive: object, send: object) -> None:
    return None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_tcp_connection_gets_its_deadlines(host: str) -> None:
    config = uvicorn.Config(app=_app, http=GuardedHttpProtocol, lifespan="off", log_level="error")
    config.load()
    state = ServerState()
    made: list[GuardedHttpProtocol] = []

    def factory() -> GuardedHttpProtocol:
        made.append(GuardedHttpProtocol(config=config, server_state=state, app_state={}))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(factory, host, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection(host, port)
        try:
            async with asyncio.timeout(5):
                while not made or made[0].transport is None:
                    await asyncio.sleep(0.01)
            sock = made[0].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(
                UNACKED_LIMIT * 1000
            )
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE[0]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE[2]
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
