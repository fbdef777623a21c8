"""``answers.accept_or_gone``: the one accept of the terminal's and screen's sockets.

A page may go between the broker's claim of its session (after the cookie's
lookup, which awaits the store) and the WebSocket's answer. uvicorn then raises
``ClientDisconnected`` from ``accept``, which left the claimed relay registered
and the session active with nobody on it; the callers now give the claim back
(``session_sockets.py``, ``invites.py``). Real uvicorn with the console's
WebSocket protocol on 127.0.0.1, a real client that hangs up, and the handler
held until uvicorn has seen it go (as a slow store would hold it).
"""

from __future__ import annotations

import asyncio
import base64
import os

from shortcutkit import Counting, serving
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from allowhelp.broker.console.answers import accept_or_gone


def _upgrade(port: int, protocols: str = "") -> bytes:
    offered = f"Sec-WebSocket-Protocol: {protocols}\r\n" if protocols else ""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"{offered}\r\n"
    ).encode()


async def test_a_page_gone_before_its_answer_is_said_not_raised() -> None:
    asked = asyncio.Event()
    answers: list[bool] = []

    async def handler(websocket: WebSocket) -> None:
        asked.set()
        for _ in range(500):  # held until uvicorn has seen the page go
            if Counting.made and Counting.made[0].disconnected:
                break
            await asyncio.sleep(0.01)
        answers.append(await accept_or_gone(websocket))

    app = Starlette(routes=[WebSocketRoute("/t", handler)])
    async with serving(app, Counting, ws_per_message_deflate=False) as port:
        Counting.log, Counting.made = [], []
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_upgrade(port, "binary"))
        await writer.drain()
        await asyncio.wait_for(asked.wait(), 10)
        writer.transport.abort()  # gone before any answer
        for _ in range(500):
            if answers:
                break
            await asyncio.sleep(0.01)
    assert answers == [False]


async def test_a_page_that_stays_is_accepted_with_binary_when_it_offers_it() -> None:
    chosen: list[str | None] = []

    async def handler(websocket: WebSocket) -> None:
        assert await accept_or_gone(websocket)
        await websocket.send_bytes(b"ok")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/t", handler)])
    async with serving(app, Counting, ws_per_message_deflate=False) as port:
        Counting.log, Counting.made = [], []
        for offered in (["binary"], None):
            async with connect(f"ws://127.0.0.1:{port}/t", subprotocols=offered) as ws:  # type: ignore[arg-type]
                assert await asyncio.wait_for(ws.recv(), 10) == b"ok"
                chosen.append(ws.subprotocol)
    assert chosen == ["binary", None]
