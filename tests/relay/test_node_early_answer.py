"""A node that answers a relayed upload before it has taken the body, and closes (a
refusal: view only, a PC stuck on an earlier call), has its answer passed on
(``relay/node_http.py``), not a 502 "cannot be reached" for the write its close broke.

A real TLS server on 127.0.0.1 plays the other node: it reads the request's head,
answers 504 without reading the body, and closes; ``send_to_node`` is the relay's own
client, sending a body far larger than the sockets' buffers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from allowhelp.broker.errors import AgentUnreachable
from allowhelp.broker.relay.node_http import send_to_node
from allowhelp.broker.store.node_peers import PeerNode
from tlskit import PublicCA

REFUSAL = b'{"error":"pc_not_answering","message":"x: not asked"}'
BODY = 64 * 1024 * 1024  # far past what the sockets hold: the close breaks the writes


async def _refusing_node(context: ssl.SSLContext, *, answer: bool) -> tuple[asyncio.Server, int]:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
        await asyncio.sleep(0.3)  # the body is under way meanwhile
        if answer:
            writer.write(
                b"HTTP/1.1 504 Gateway Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(REFUSAL), REFUSAL)
            )
            await writer.drain()
        writer.transport.abort()  # closed with the body unread: a reset for the sender

    server = await asyncio.start_server(refuse, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def _upload() -> AsyncIterator[bytes]:
    chunk = b"x" * (256 * 1024)
    for _ in range(BODY // len(chunk)):
        yield chunk


def _contexts(tmp_path: Path) -> tuple[PublicCA, ssl.SSLContext]:
    ca = PublicCA(tmp_path / "ca")
    ca.issue(("127.0.0.1",)).install(tmp_path / "node.pem", tmp_path / "node.key")
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(tmp_path / "node.pem", tmp_path / "node.key")
    return ca, served


async def _relay(ca: PublicCA, port: int) -> tuple[int, bytes]:
    answer = await send_to_node(
        PeerNode("n-refusing", f"127.0.0.1:{port}", "https://127.0.0.1"),
        ca.client_context(),
        lambda cert, peer: None,
        method="PUT",
        target="/api/v1/sessions/abcdefgh/files/content?path=up.bin",
        headers={"content-length": str(BODY), "content-type": "application/octet-stream"},
        body=_upload(),
    )
    return answer.status, b"".join([chunk async for chunk in answer.body])


def test_an_answer_sent_before_the_body_was_taken_is_passed_on(tmp_path: Path) -> None:
    ca, served = _contexts(tmp_path)

    async def go() -> tuple[int, bytes]:
        server, port = await _refusing_node(served, answer=True)
        try:
            return await asyncio.wait_for(_relay(ca, port), 60)
        finally:
            server.close()
            await server.wait_closed()

    status, body = asyncio.run(go())
    assert status == 504 and body == REFUSAL


def test_a_node_that_closes_without_an_answer_is_still_unreachable(tmp_path: Path) -> None:
    ca, served = _contexts(tmp_path)

    async def go() -> None:
        server, port = await _refusing_node(served, answer=False)
        try:
            await asyncio.wait_for(_relay(ca, port), 60)
        finally:
            server.close()
            await server.wait_closed()

    with pytest.raises(AgentUnreachable, match="cannot be reached"):
        asyncio.run(go())
