"""A small RFB 3.8 server: raw frames from pipes to one viewer on a socket.

For the portal engine (``portalvnc``) and wlroots' all monitors (``wayvncall``).
Security type None (the SSH tunnel and the consent gate are the security).
Frames come as whole BGRx pictures of a fixed size, one after another, on a
pipe; the newest complete one is kept. Several pipes (one per monitor, "all
monitors") each fill their ``Piece`` of one picture; the first picture waits
until each has sent a frame (at most ``FIRST_PICTURE_WAIT`` seconds after the
first one, then a monitor that has not is black until it does). A viewer's
FramebufferUpdateRequest is answered with Raw rectangles: the whole screen when
it is not incremental, otherwise the band of rows that changed since the last
picture sent, as soon as there is one. The pixel format the viewer asks for is
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from allowhelp.agent.errors import AgentError

VERSION = b"RFB 003.008\n"
BPP = 4
NATIVE_SHIFTS = (16, 8, 0)  # BGRx read as a little-endian 32-bit value
MAX_CUT_TEXT = 16 * 1024 * 1024
FIXED = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10}
FIRST_PICTURE_WAIT = 2.0  # seconds: the other monitors' first frames after the first one


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
    def __init__(self, piece: Piece) -> None:
        self.piece = piece
        self.incoming = bytearray()
        self.seen = False


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
    ) -> None:
        self._viewer = viewer
        self._input = input_sink  # None: view-only, input is read and dropped
        self.width = width
        self.height = height
        self._name = name.encode()
        self._canvas = bytearray(width * height * BPP)
        self._fresh = False  # the canvas has changed since ``_latest`` was taken
        self._feeds: dict[int, _Feed] = {}
        self._first_frame_at: float | None = None
        self._latest: bytes | None = None
        self._sent: bytes | None = None
        self._wanted: bool | None = None  # None: no request; else: incremental?
        self._order: tuple[int, int, int] | None = None  # byte index of R, G, B; None: native
        self._buf = bytearray()

    # --- the loop

    def serve(self, frames: int | Sequence[Piece]) -> None:
        """Until the viewer leaves (ConnectionError) or any frames end (StreamEnded).

        ``frames``: one pipe of whole pictures, or the pieces of the picture."""
        pieces = (
            [Piece(frames, 0, 0, self.width, self.height)] if isinstance(frames, int) else frames
        )
        for piece in pieces:
            if piece.x + piece.width > self.width or piece.y + piece.height > self.height:
                raise ValueError("a piece outside the picture")
            os.set_blocking(piece.fd, False)
            self._feeds[piece.fd] = _Feed(piece)
        self._handshake()
        self._viewer.setblocking(False)
        with selectors.DefaultSelector() as selector:
            for fd in self._feeds:
                selector.register(fd, selectors.EVENT_READ, "frames")
            selector.register(self._viewer, selectors.EVENT_READ, "viewer")
            while True:
                for key, _ in selector.select(self._patience()):
                    if key.data == "frames":
                        self._read_frames(self._feeds[int(key.fd)])
                    else:
                        self._read_viewer()
                self._answer()

    def _patience(self) -> float | None:
        """How long the loop may sleep: until the first picture is due, or forever."""
        if self._first_frame_at is None or self._ready():
            return None
        return max(0.0, self._first_frame_at + FIRST_PICTURE_WAIT - time.monotonic())

    def _ready(self) -> bool:
        """A first picture may go: every piece has a frame, or the wait is over."""
        if self._first_frame_at is None:
            return False
        if all(feed.seen for feed in self._feeds.values()):
            return True
        return time.monotonic() >= self._first_frame_at + FIRST_PICTURE_WAIT

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
        data = bytearray()
        while len(data) < size:
            chunk = self._viewer.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the viewer left")
            data += chunk
        return bytes(data)

    def _read_frames(self, feed: _Feed) -> None:
        size = feed.piece.frame_size
        while True:
            try:
                data = os.read(feed.piece.fd, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise StreamEnded("the desktop's screen stream ended")
            feed.incoming += data
            whole = len(feed.incoming) // size
            if whole:
                newest = (whole - 1) * size
                self._draw(feed.piece, memoryview(feed.incoming)[newest : newest + size])
                del feed.incoming[: whole * size]
                feed.seen = True
                if self._first_frame_at is None:
                    self._first_frame_at = time.monotonic()

    def _draw(self, piece: Piece, frame: memoryview) -> None:
        stride = self.width * BPP
        row = piece.width * BPP
        with frame:
            if piece.x == 0 and piece.width == self.width:
                start = piece.y * stride
                self._canvas[start : start + len(frame)] = frame
            else:
                for line in range(piece.height):
                    at = (piece.y + line) * stride + piece.x * BPP
                    self._canvas[at : at + row] = frame[line * row : (line + 1) * row]
        self._fresh = True

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

    def _answer(self) -> None:
        if self._wanted is None or not self._ready():
            return
        if self._fresh or self._latest is None:
            self._latest = bytes(self._canvas)
            self._fresh = False
        if self._wanted and self._sent is not None:
            band = changed_rows(self._sent, self._latest, self.width * BPP)
            if band is None:
                return  # nothing new yet: the request waits for a change
            top, bottom = band
        else:
            top, bottom = 0, self.height
        self._send(top, bottom)

    def _send(self, top: int, bottom: int) -> None:
        frame = self._latest
        if frame is None:
            return
        stride = self.width * BPP
        pixels = self._convert(frame[top * stride : bottom * stride])
        head = struct.pack(">BxH", 0, 1)
        rect = struct.pack(">HHHHi", 0, top, self.width, bottom - top, 0)
        self._viewer.setblocking(True)
        try:
            self._viewer.sendall(head + rect + pixels)
        finally:
            self._viewer.setblocking(False)
        self._sent = frame
        self._wanted = None

    def _convert(self, pixels: bytes) -> bytes:
        if self._order is None:
            return pixels
        out = bytearray(len(pixels))
        red, green, blue = self._order
        out[red::4] = pixels[2::4]
        out[green::4] = pixels[1::4]
        out[blue::4] = pixels[0::4]
        return bytes(out)


def changed_rows(before: bytes, after: bytes, stride: int) -> tuple[int, int] | None:
    """The band of rows [top, bottom) where ``after`` differs from ``before``; None: same."""
    if before == after:
        return None
    rows = len(after) // stride

    def differs(row: int) -> bool:
        return before[row * stride : (row + 1) * stride] != after[row * stride : (row + 1) * stride]

    top = next(r for r in range(rows) if differs(r))
    bottom = next(r + 1 for r in range(rows - 1, top - 1, -1) if differs(r))
    return top, bottom
