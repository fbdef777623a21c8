"""``/api/v1/tunnel``: the agents' SSH tunnel on the console's HTTPS port.

For PCs whose network lets only HTTPS out (often through a web proxy). The
WebSocket carries the same SSH as the raw tunnel port; the tunnel room runs
the handshake exactly as for an accepted TCP connection (key check, admission
control, audit), on one end of a socketpair this endpoint feeds.

Agents are not browsers: they send no Origin and no cookie, and nothing on
this path answers to either. The wall lets this one path through without the
console's Origin rule (``wall.py``), and this endpoint refuses any upgrade
that *does* carry an Origin: a page in a technician's browser can never open
a tunnel, whatever site it comes from. It must also ask for the tunnel's
subprotocol, so nothing reaches SSH by accident.
"""

from __future__ import annotations

import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from allowhelp.broker.console.answers import CloseCode
from allowhelp.broker.console.api.base import services
from allowhelp.wsbridge import PATH, SUBPROTOCOL, bridge, socket_pair

log = logging.getLogger(__name__)


async def tunnel_socket(websocket: WebSocket) -> None:
    if "origin" in websocket.headers or SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
        await websocket.close(CloseCode.POLICY)  # before accept: HTTP 403
        return
    svc = services(websocket)
    client = websocket.client
    address = client.host if client else "?"
    peer = f"{address}:{client.port}" if client else "?"
    await websocket.accept(subprotocol=SUBPROTOCOL)
    ours, theirs = socket_pair()
    svc.tunnel.accept_stream(theirs, address, f"{peer} (https)")

    async def receive() -> bytes | None:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] != "websocket.receive" or message.get("bytes") is None:
            return None  # a disconnect, or text: not SSH
        data: bytes = message["bytes"]
        return data

    async def close() -> None:
        await websocket.close(CloseCode.NORMAL)

    await bridge(ours, receive, websocket.send_bytes, close)


def routes() -> list[BaseRoute]:
    return [WebSocketRoute(PATH, tunnel_socket)]
