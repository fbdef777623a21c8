"""A small RFB 3.8 server: one picture from pipes or upstream viewers to one viewer.

For the portal engine (``portalvnc``) and wlroots' all monitors (``wayvncall``).
Security type None (the SSH tunnel and the consent gate are the security).

**One buffer.** The picture is one ``Canvas``: every source writes into it, and
the viewer is sent from it, only the rectangles that changed since the last
update it was sent (its *damage*). Two kinds of source:

* a pipe of whole BGRx frames of a fixed size (``Piece``: GStreamer, one per
  monitor); each frame is read into the piece's own frame buffer, compared
  with its place in the canvas, and only the band of rows that differs is
  copied in and counted as damage;
* an upstream RFB server (``rfbupstream``: one wayvnc per output) whose Raw
  rectangles are received straight into their place in the canvas by a reader
  thread, which then reports them as damage (a wake-up pipe stops the
  server's wait).

The first picture waits until each source has given one (at most
``FIRST_PICTURE_WAIT`` seconds after the first one; then a monitor that has
not is black until it does). A viewer's FramebufferUpdateRequest is answered
with Raw rectangles: the whole screen when it is not incremental, otherwise
the damage, as soon as there is some. A rectangle a reader thread writes into
while it is being sent may go out torn; its damage is reported once it is
whole, so the next update mends it. The pixel format the viewer asks for is
honoured when it is 32-bit true colour with byte-aligned 8-bit channels (what
noVNC asks for); anything else ends the session with the reason. Keys and the
pointer go to an ``InputSink`` on a control grant; without one (view-only) they
are read and dropped. The clipboard is never served.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from allowhelp.agent.errors import AgentError
from allowhelp.agent.rfbcanvas import BPP, Canvas, Rect

VERSION = b"RFB 003.008\n"
NATIVE_SHIFTS = (16, 8, 0)  # BGRx read as a little-endian 32-bit value
MAX_CUT_TEXT = 16 * 1024 * 1024
FIXED = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10}


@dataclass(frozen=True)
class Piece:
    """A pipe of whole ``width`` x ``height`` frames, drawn at (x, y) of the picture."""

    fd: int
    x: int
    y: int
    width: int
    height: int

    @property
    def frame_size(self) -> int:
        return self.width * self.height * BPP


class _Feed:
    """A pipe's frame, read in place; on each whole one, the band that differs goes in."""

    def __init__(self, piece: Piece, source: int) -> None:
        self.piece = piece
        self.source = source
        self.frame = bytearray(piece.frame_size)
        self.view = memoryview(self.frame)
        self.filled = 0

    def read(self, canvas: Canvas) -> None:
        while True:
            try:
                got = os.readv(self.piece.fd, [self.view[self.filled :]])
            except BlockingIOError:
                return
            if not got:
                raise StreamEnded("the desktop's screen stream ended")
            self.filled += got
            if self.filled == len(self.frame):
                self.filled = 0
                self._draw(canvas)

    def _draw(self, canvas: Canvas) -> None:
        piece = self.piece
        row = piece.width * BPP
        band = changed_rows(
            [canvas.row(piece.x, piece.y + line, piece.width) for line in range(piece.height)],
            self.frame,
            row,
        )
        if band is not None:
            top, bottom = band
            canvas.blit(piece.x, piece.y + top, piece.width, bottom - top, self.view[top * row :])
            band_rect: Rect | None = (piece.x, piece.y + top, piece.width, bottom - top)
        else:
            band_rect = None
        canvas.damaged(band_rect, self.source)


class InputSink(Protocol):
    """Where the viewer's input goes on a control grant (the RemoteDesktop portal)."""

    def key(self, keysym: int, down: bool) -> None: ...

    def pointer(self, mask: int, x: int, y: int) -> None: ...


class StreamEnded(AgentError):
    """The picture source (GStreamer) stopped."""


class ViewerError(ConnectionError):
    """The viewer broke the protocol or asked for what this server does not do."""


class RfbServer:
    def __init__(
        self,
        viewer: socket.socket,
        width: int,
        height: int,
        name: str,
        input_sink: InputSink | None = None,
        *,
        canvas: Canvas | None = None,
    ) -> None:
        """``canvas``: the picture, when other threads write into it (``Upstream``);
        else one is made for the pipes ``serve`` is given."""
        self._viewer = viewer
        self._input = input_sink  # None: view-only, input is read and dropped
        self.width = width
        self.height = height
        self._name = name.encode()
        self._canvas = canvas
        self._feeds: dict[int, _Feed] = {}
        self._sent_once = False
        self._wanted: bool | None = None  # None: no request; else: incremental?
        self._order: tuple[int, int, int] | None = None  # byte index of R, G, B; None: native
        self._buf = bytearray()

    # --- the loop

    def serve(self, frames: int | Sequence[Piece] = ()) -> None:
        """Until the viewer leaves (ConnectionError) or any frames end (StreamEnded).

        ``frames``: one pipe of whole pictures, or the pieces of the picture (none
        when the canvas given is written by others)."""
        pieces = (
            [Piece(frames, 0, 0, self.width, self.height)] if isinstance(frames, int) else frames
        )
        for piece in pieces:
            if piece.x + piece.width > self.width or piece.y + piece.height > self.height:
                raise ValueError("a piece outside the picture")
        own = self._canvas is None
        canvas = self._canvas or Canvas(self.width, self.height, len(pieces))
        try:
            for source, piece in enumerate(pieces):
                os.set_blocking(piece.fd, False)
                self._feeds[piece.fd] = _Feed(piece, source)
            self._serve(canvas)
        finally:
            if own:
                canvas.close()

    def _serve(self, canvas: Canvas) -> None:
        self._handshake()
        self._viewer.setblocking(False)
        with selectors.DefaultSelector() as selector:
            for fd in self._feeds:
                selector.register(fd, selectors.EVENT_READ, "frames")
            selector.register(canvas.wake_fd, selectors.EVENT_READ, "woken")
            selector.register(self._viewer, selectors.EVENT_READ, "viewer")
            while True:
                for key, _ in selector.select(canvas.patience()):
                    if key.data == "frames":
                        self._feeds[int(key.fd)].read(canvas)
                    elif key.data == "viewer":
                        self._read_viewer()
                    else:
                        canvas.drain()
                if canvas.stopped:
                    raise StreamEnded(canvas.stopped)
                self._answer(canvas)

    def _handshake(self) -> None:
        self._viewer.setblocking(True)
        self._viewer.sendall(VERSION)
        if self._recv(12) != VERSION:
            raise ViewerError("the viewer does not speak RFB 3.8")
        self._viewer.sendall(b"\x01\x01")  # one security type: None
        if self._recv(1) != b"\x01":
            raise ViewerError("the viewer chose a security type other than None")
        self._viewer.sendall(struct.pack(">I", 0))
        self._recv(1)  # ClientInit: shared or not, there is one viewer
        pixel_format = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, *NATIVE_SHIFTS)
        head = struct.pack(">HH", self.width, self.height) + pixel_format
        self._viewer.sendall(head + struct.pack(">I", len(self._name)) + self._name)

    def _recv(self, size: int) -> bytes:
        return receive(self._viewer, size, lambda: ConnectionError("the viewer left"))

    def _read_viewer(self) -> None:
        try:
            data = self._viewer.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("the viewer left")
        self._buf += data
        while self._buf and (size := self._message_size()) is not None:
            if len(self._buf) < size:
                return
            self._message(bytes(self._buf[:size]))
            del self._buf[:size]

    # --- the viewer's messages

    def _message_size(self) -> int | None:
        kind = self._buf[0]
        if kind in FIXED:
            return FIXED[kind]
        if kind == 2:  # SetEncodings
            if len(self._buf) < 4:
                return None
            return 4 + 4 * int(struct.unpack_from(">H", self._buf, 2)[0])
        if kind == 6:  # ClientCutText
            if len(self._buf) < 8:
                return None
            length = abs(int(struct.unpack_from(">i", self._buf, 4)[0]))
            if length > MAX_CUT_TEXT:
                raise ViewerError("the viewer's clipboard message is too long")
            return 8 + length
        raise ViewerError(f"the viewer sent an RFB message of type {kind}, not served here")

    def _message(self, message: bytes) -> None:
        kind = message[0]
        if kind == 0:
            self._set_pixel_format(message[4:])
        elif kind == 3:
            incremental = bool(message[1])
            self._wanted = incremental if self._wanted is None else (self._wanted and incremental)
        elif kind == 4 and self._input is not None:
            down, keysym = struct.unpack_from(">BxxI", message, 1)
            self._input.key(int(keysym), bool(down))
        elif kind == 5 and self._input is not None:
            mask, x, y = struct.unpack_from(">BHH", message, 1)
            self._input.pointer(
                int(mask), min(int(x), self.width - 1), min(int(y), self.height - 1)
            )
        # 2 (encodings: Raw is always there), 6 (clipboard: not served), 150: nothing to do

    def _set_pixel_format(self, fmt: bytes) -> None:
        bpp, _, big, true_colour, rmax, gmax, bmax, *shifts = struct.unpack(">BBBBHHHBBB", fmt[:13])
        if bpp != 32 or not true_colour or (rmax, gmax, bmax) != (255, 255, 255):
            raise ViewerError("the viewer asked for a pixel format other than 32-bit true colour")
        if any(s % 8 or s > 24 for s in shifts) or len(set(shifts)) != 3:
            raise ViewerError("the viewer asked for colour channels that are not whole bytes")
        index = [3 - s // 8 if big else s // 8 for s in shifts]
        native = [2, 1, 0]
        self._order = None if index == native else (index[0], index[1], index[2])

    # --- pictures

    def _answer(self, canvas: Canvas) -> None:
        if self._wanted is None or not canvas.ready():
            return
        if self._wanted and self._sent_once:
            rects = canvas.take()
            if not rects:
                return  # nothing new yet: the request waits for a change
        else:
            canvas.take()  # all of it goes
            rects = [(0, 0, self.width, self.height)]
        self._send(canvas, rects)

    def _send(self, canvas: Canvas, rects: Sequence[Rect]) -> None:
        self._viewer.setblocking(True)
        try:
            self._viewer.sendall(struct.pack(">BxH", 0, len(rects)))
            for x, y, w, h in rects:
                self._viewer.sendall(struct.pack(">HHHHi", x, y, w, h, 0))
                self._viewer.sendall(self._pixels(canvas, (x, y, w, h)))
        finally:
            self._viewer.setblocking(False)
        self._sent_once = True
        self._wanted = None

    def _pixels(self, canvas: Canvas, rect: Rect) -> memoryview:
        """The rectangle's pixels in the viewer's format: the canvas itself where its
        rows are whole and the format native, else one copy of the rectangle."""
        x, y, w, h = rect
        if self._order is None and x == 0 and w == self.width:
            return canvas.pixels[y * canvas.stride : (y + h) * canvas.stride]
        row = w * BPP
        buffer = bytearray(row * h)
        out = memoryview(buffer)
        for line in range(h):
            out[line * row : (line + 1) * row] = canvas.row(x, y + line, w)
        if self._order is not None:
            red, green, blue = self._order
            channels = buffer[2::4], buffer[1::4], buffer[0::4]
            for index, channel in zip((red, green, blue), channels, strict=True):
                buffer[index::4] = channel
        return out


def changed_rows(
    before: Sequence[memoryview] | bytes, after: bytes | bytearray, stride: int
) -> tuple[int, int] | None:
    """The band of rows [top, bottom) where ``after`` differs from ``before``; None: same.

    ``before``: a whole picture, or its rows (views of the canvas); compared in
    place, without a copy."""
    rows = len(after) // stride
    if isinstance(before, bytes):
        if before == after:
            return None
        view = memoryview(before)
        lines = [view[r * stride : (r + 1) * stride] for r in range(rows)]
    else:
        lines = list(before)

    def differs(row: int) -> bool:
        return not after.startswith(lines[row], row * stride)

    top = next((r for r in range(rows) if differs(r)), None)
    if top is None:
        return None
    bottom = next(r + 1 for r in range(rows - 1, top - 1, -1) if differs(r))
    return top, bottom


def receive_into(sock: socket.socket, view: memoryview, closed: Callable[[], Exception]) -> None:
    """Fill ``view`` from ``sock`` (a blocking one); ``closed()`` is raised if it closes
    first. The one receive of both sides of RFB here (``rfbupstream`` too)."""
    got = 0
    while got < len(view):
        size = sock.recv_into(view[got:])
        if not size:
            raise closed()
        got += size


def receive(sock: socket.socket, size: int, closed: Callable[[], Exception]) -> bytes:
    """Exactly ``size`` bytes from ``sock``, as ``receive_into``."""
    data = bytearray(size)
    with memoryview(data) as view:
        receive_into(sock, view, closed)
    return bytes(data)
