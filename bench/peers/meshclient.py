"""MeshCentral's web terminal and remote desktop, driven the way its web page drives them.

``control.ashx`` (logged in with ``x-meshauth``, as meshctrl.js does), then
``{"action":"authcookie"}`` for a cookie pair, then a ``tunnel`` message that
tells the agent to dial ``meshrelay.ashx`` with the relay cookie, while the
"browser" opens ``meshrelay.ashx?browser=1&p=<protocol>&...&auth=<cookie>``.
The relay says ``c`` (or ``cr``) once both ends are joined; the browser then
sends its options and the protocol number (``1`` terminal, ``2`` desktop), as
``agent-redir-ws-0.1.1.js`` does.

Desktop commands (``agent-desktop-0.0.2.js``): 2-byte command, 2-byte size
(command 27 wraps a jumbo command with a 4-byte size); 7 is the screen size,
3 a JPEG tile at (x, y). The page answers the screen size with its compression
settings (JPEG, quality 50, scaling 1024 = 100 %, frame timer 100 ms: the page's
defaults) and "unpause".
"""

from __future__ import annotations

import io
import json
import secrets
import struct
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from websockets.sync.client import ClientConnection, connect

from bench.peers.meshserver import MeshServer, insecure_context

CTRL = '{"ctrlChannel":"102938"'
JPEG, QUALITY, SCALING, FRAME_TIMER_MS = 1, 50, 1024, 100


def _json_until(ws: ClientConnection, action: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        raw = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        msg: dict[str, Any] = json.loads(raw)
        if msg.get("action") == action:
            return msg


@contextmanager
def relay(
    server: MeshServer, node_id: str, protocol: int, cols: int = 100, rows: int = 30
) -> Iterator[ClientConnection]:
    """A joined meshrelay.ashx WebSocket for ``protocol``, after the page's hand-shake."""
    with server.control() as control:
        control.send(json.dumps({"action": "authcookie"}))
        cookies = _json_until(control, "authcookie")
        tunnel = secrets.token_hex(6)
        value = (
            f"*/meshrelay.ashx?p={protocol}&nodeid={node_id}&id={tunnel}&rauth={cookies['rcookie']}"
        )
        control.send(
            json.dumps(
                {
                    "action": "msg",
                    "nodeid": node_id,
                    "type": "tunnel",
                    "usage": protocol,
                    "value": value,
                }
            )
        )
        query = urllib.parse.urlencode(
            {
                "browser": 1,
                "p": protocol,
                "nodeid": node_id,
                "id": tunnel,
                "auth": cookies["cookie"],
            }
        )
        url = server.url.replace("https://", "wss://") + "/meshrelay.ashx?" + query
        with connect(
            url, ssl=insecure_context(), max_size=None, compression=None, open_timeout=30
        ) as ws:
            deadline = time.monotonic() + 30
            while True:
                first = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                if first in ("c", "cr"):
                    break
            options = {"ctrlChannel": "102938", "type": "options", "cols": cols, "rows": rows}
            ws.send(json.dumps(options))
            ws.send(str(protocol))
            yield ws


def _data(frame: str | bytes) -> bytes | None:
    """Terminal output in a relay frame; None for the relay's control messages."""
    if isinstance(frame, str):
        if frame.startswith(CTRL):
            return None
        return frame.encode()
    return frame


class MeshTerminal:
    """The agent's shell through the relay (the page's terminal, protocol 1)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def recv(self, timeout: float = 10) -> bytes:
        while True:
            data = _data(self.ws.recv(timeout=timeout))
            if data:
                return data

    def until(self, marker: bytes, timeout: float = 30) -> None:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            seen = seen[-64:] + self.recv(max(0.1, deadline - time.monotonic()))

    def send(self, data: bytes) -> None:
        self.ws.send(data)


@dataclass
class Tile:
    at: float
    size: int
    x: int
    y: int


class MeshDesktop:
    """The agent's screen through the relay (protocol 2): tiles as they come, decoded."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending = bytearray()
        self.width = self.height = 0
        self.received = 0

    def _commands(self, timeout: float) -> Iterator[tuple[int, bytes]]:
        """Complete commands from one or more WebSocket messages."""
        frame = self.ws.recv(timeout=timeout)
        if isinstance(frame, str):
            return
        self.received += len(frame)
        self.pending += frame
        while len(self.pending) >= 4:
            cmd, size = struct.unpack_from(">HH", self.pending)
            body_at = 0
            if cmd == 27 and size == 8:
                if len(self.pending) < 10:
                    return
                size = struct.unpack_from(">I", self.pending, 4)[0]
                cmd = struct.unpack_from(">H", self.pending, 8)[0]
                body_at = 8
            if size < 4 or len(self.pending) < body_at + size:
                return
            body = bytes(self.pending[body_at : body_at + size])
            del self.pending[: body_at + size]
            yield cmd, body

    def _settings(self) -> None:
        self.ws.send(
            struct.pack(">HHBBHH", 5, 10, JPEG, QUALITY, SCALING, FRAME_TIMER_MS)
            + struct.pack(">HHB", 8, 5, 0)  # unpause
        )

    def tiles(self, until: float) -> Iterator[Tile]:
        """Decoded JPEG tiles until the monotonic deadline ``until``."""
        while time.monotonic() < until:
            try:
                commands = list(self._commands(max(0.05, until - time.monotonic())))
            except TimeoutError:
                return
            for cmd, body in commands:
                if cmd == 7:
                    self.width, self.height = struct.unpack_from(">HH", body, 4)
                    self._settings()
                elif cmd == 3:
                    x, y = struct.unpack_from(">HH", body, 4)
                    with Image.open(io.BytesIO(body[8:])) as picture:
                        picture.load()  # decoded, as the page's <img> does
                    yield Tile(time.monotonic(), len(body), x, y)
