"""The viewer's side of RFB 3.8, just enough to read one wayvnc's output as whole frames.

For the wlroots "all monitors" engine (``wayvncall``): wayvnc 0.5 serves one
output, so that engine runs one wayvnc per output and reads each through an
``Upstream``: security None (wayvnc runs on a socket private to the user,
``--config=/dev/null``), the pixel format of the picture the engine serves
(BGRx, as ``rfbserver`` keeps it), Raw rectangles only (the one encoding this
parser reads; anything else ends the session with the reason), an incremental
request after each update. Each Raw rectangle is received straight into its
place in the engine's one picture (``rfbcanvas.Canvas``, the output at its
place in the layout) and then reported there as damage: no frame is copied
whole, only what wayvnc sends, once.

Input for the output goes the other way (``key``, ``pointer``), from the
engine's thread serving the technician while ``run`` reads in its own thread;
a lock keeps each message whole.
"""

from __future__ import annotations

import socket
import struct
import threading

from allowhelp.agent.castlayout import MAX_PIXELS, MAX_SIDE
from allowhelp.agent.errors import AgentError
from allowhelp.agent.rfbcanvas import Canvas, Rect
from allowhelp.agent.rfbserver import receive, receive_into

VERSION = b"RFB 003.008\n"
BPP = 4
BGRX = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
MAX_TEXT = 16 * 1024 * 1024
MAX_NAME = 4096  # the desktop's name: wayvnc's is a few bytes


class UpstreamError(AgentError):
    """wayvnc said something this reader does not take, or closed; the message says which."""


def _closed() -> UpstreamError:
    return UpstreamError("wayvnc closed its connection")


class Upstream:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self.width = 0
        self.height = 0

    def _recv(self, size: int) -> bytes:
        return receive(self._sock, size, _closed)

    def _skip(self, size: int) -> None:
        """Read and drop ``size`` bytes, never holding more than 1 MiB of them."""
        while size > 0:
            size -= len(self._recv(min(size, 1 << 20)))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def handshake(self) -> tuple[int, int]:
        """Version, security None, shared; the output's size. Asks for its first picture."""
        if self._recv(12)[:4] != b"RFB ":
            raise UpstreamError("wayvnc does not speak RFB")
        self._send(VERSION)
        types = self._recv(self._recv(1)[0])
        if 1 not in types:
            raise UpstreamError("wayvnc asks for authentication (a user's config?)")
        self._send(b"\x01")
        if struct.unpack(">I", self._recv(4))[0] != 0:
            raise UpstreamError("wayvnc refused the connection")
        self._send(b"\x01")  # shared
        head = self._recv(24)
        width, height = struct.unpack_from(">HH", head)
        name_length = struct.unpack_from(">I", head, 20)[0]
        if name_length > MAX_NAME:
            raise UpstreamError(f"wayvnc sent a desktop name of {name_length} bytes")
        self._skip(name_length)  # the desktop's name
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width * height > MAX_PIXELS:
            raise UpstreamError(f"wayvnc serves a picture of {width}x{height}")
        self.width, self.height = width, height
        self._send(struct.pack(">Bxxx", 0) + BGRX)  # SetPixelFormat
        self._send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
        self._request(incremental=False)
        return width, height

    def _request(self, *, incremental: bool) -> None:
        self._send(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    def run(self, canvas: Canvas, x: int, y: int, source: int) -> None:
        """Each update into ``canvas`` with this output at (x, y), reported as damage of
        ``source``, until wayvnc closes (UpstreamError) or the socket does (OSError)."""
        while True:
            kind = self._recv(1)[0]
            if kind == 0:
                rects: list[Rect | None] = [*self._update(canvas, x, y)]
                for rect in rects or [None]:  # an empty update still counts as given
                    canvas.damaged(rect, source)
                self._request(incremental=True)
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText: not served
                length = struct.unpack(">3xI", self._recv(7))[0]
                if length > MAX_TEXT:
                    raise UpstreamError("wayvnc sent a clipboard too long")
                self._skip(length)
            else:
                raise UpstreamError(f"wayvnc sent an RFB message of type {kind}")

    def _update(self, canvas: Canvas, left: int, top: int) -> list[Rect]:
        count = struct.unpack(">xH", self._recv(3))[0]
        rects: list[Rect] = []
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", self._recv(12))
            if encoding != 0:
                raise UpstreamError(f"wayvnc sent encoding {encoding}, not Raw")
            if x + w > self.width or y + h > self.height:
                raise UpstreamError("wayvnc sent a rectangle outside its picture")
            if left + x == 0 and w == canvas.width:  # whole rows of the canvas: one read
                at = (top + y) * canvas.stride
                receive_into(self._sock, canvas.pixels[at : at + h * canvas.stride], _closed)
            else:
                for line in range(h):
                    receive_into(self._sock, canvas.row(left + x, top + y + line, w), _closed)
            rects.append((left + x, top + y, w, h))
        return rects

    def key(self, keysym: int, down: bool) -> None:
        self._send(struct.pack(">BBxxI", 4, down, keysym))

    def pointer(self, mask: int, x: int, y: int) -> None:
        self._send(struct.pack(">BBHH", 5, mask, x, y))

    def close(self) -> None:
        self._sock.close()
