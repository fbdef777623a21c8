"""An answer from another node that stalls mid-body is let go at once when its reader
gives up (``relay/node_http.py``): a node that sends its headers and then nothing,
never reading again, must not hold the caller for asyncio's 30 s TLS goodbye.

A real TLS server on 127.0.0.1 plays the stalled node; ``send_to_node`` is the
relay's own client.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from allowhelp.broker.relay.node_http import send_to_node
from allowhelp.broker.store.node_peers import PeerNode
from tlskit import PublicCA

GIVE_UP = 1.0  # the caller's deadline (the session list's is INVITED_WAIT)


async def _stalled_node(context: ssl.SSLContext, stop: asyncio.Event) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n0\r\n\r\n")  # the chunked request, body and all
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n[")
        await writer.drain()
        cast(asyncio.Transport, writer.transport).pause_reading()  # never reads, never closes
        await stop.wait()
        writer.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def _nothing() -> AsyncIterator[bytes]:
    yield b""


def test_a_stalled_answer_is_let_go_at_the_callers_deadline(tmp_path: Path) -> None:
    ca = PublicCA(tmp_path / "ca")
    issued = ca.issue(("127.0.0.1",))
    issued.install(tmp_path / "node.pem", tmp_path / "node.key")
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(tmp_path / "node.pem", tmp_path / "node.key")

    async def go() -> float:
        stop = asyncio.Event()
        server, port = await _stalled_node(served, stop)
        node = PeerNode("n-stalled", f"127.0.0.1:{port}", "https://127.0.0.1")

        async def read_all() -> bytes:
            answer = await send_to_node(
                node,
                ca.client_context(),
                lambda cert, peer: None,
                method="GET",
                target="/api/v1/sessions",
                headers={},
                body=_nothing(),
            )
            assert answer.status == 200
            return b"".join([chunk async for chunk in answer.body])

        started = time.monotonic()
        try:
            await asyncio.wait_for(read_all(), GIVE_UP)
        except TimeoutError:
            pass
        else:
            raise AssertionError("a stalled answer was read to its end")
        took = time.monotonic() - started
        stop.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.1)  # the stalled handler's abort goes through
        return took

    took = asyncio.run(go())
    assert took < GIVE_UP + 3, f"the caller was held {took:.1f} s past its deadline"


def test_a_relaying_node_waits_as_long_as_a_files_request_may_take() -> None:
    """The other node answers a files request within its own limits (its channel's
    opening, then at most four SFTP calls before a piece goes out); a relaying node
    that gave up sooner turned the PC's 504 into its own 502."""
    from allowhelp.broker.relay import node_http
    from allowhelp.broker.sessions.files import OPEN_TIMEOUT
    from allowhelp.broker.settings import MAX_FILES_TIMEOUT

    assert node_http.OPEN_FILES >= OPEN_TIMEOUT
    assert node_http.READ_TIMEOUT > OPEN_TIMEOUT + 4 * MAX_FILES_TIMEOUT
