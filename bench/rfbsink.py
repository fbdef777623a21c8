"""A minimal RFB 3.8 server on stdin/stdout (inetd style) for the ``bulk`` benchmark.

    python -P bench/rfbsink.py [WIDTH HEIGHT]

Run by the agent in place of ``x11vnc -inetd`` (``ALLOWHELP_TEST_SCREEN_COMMAND``,
stdin = stdout = one end of a socketpair) and, for the baselines, by the bench's
own TCP server with an accepted connection as stdin and stdout. Standard
library only, so it runs by file path without the repository on ``sys.path``:
the agent hands its screen program a reduced environment (no PYTHONPATH).

It is a source and a sink, never a screen:

* handshake: version 3.8, security None only, ServerInit WIDTHxHEIGHT (default
  1024x1024) at 32 bpp with a short name;
* FramebufferUpdateRequest, incremental: one FramebufferUpdate with a single Raw
  rectangle covering the whole screen (WIDTH*HEIGHT*4 bytes, built once);
* FramebufferUpdateRequest, non-incremental: a Bell (one byte), which tells the
  client that every byte it sent before the request has been read here;
* ClientCutText: counted and discarded without copying; SetPixelFormat,
  SetEncodings, KeyEvent, PointerEvent: skipped.

Reads go into one 1 MiB buffer (``recv_into``), writes are ``sendall`` of the
prebuilt update: loopback TCP through it runs at GB/s, so it is never what a
path's figure measures. It exits on EOF; a message type it does not know is an
error (exit status 2), so a broken client shows instead of being timed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys

VERSION = b"RFB 003.008\n"
PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
NAME = b"allowhelp bench sink"
CHUNK = 1 << 20
FIXED = {0: 20, 3: 10, 4: 8, 5: 6}  # SetPixelFormat, FBUpdateRequest, KeyEvent, PointerEvent
BELL = b"\x02"


class Stdio:
    """fd 0 in, fd 1 out: sockets when they are (the usual case), plain fds otherwise."""

    def __init__(self) -> None:
        self.rsock = _socket(0)
        self.wsock = _socket(1)

    def recv_into(self, view: memoryview) -> int:
        if self.rsock is not None:
            return self.rsock.recv_into(view)
        return os.readv(0, [view])

    def sendall(self, data: bytes) -> None:
        if self.wsock is not None:
            self.wsock.sendall(data)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]

    def read_exact(self, size: int) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.recv_into(view[got:])
            if not n:
                raise EOFError
            got += n
        return bytes(buf)


def _socket(fd: int) -> socket.socket | None:
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def update(width: int, height: int) -> bytes:
    """One FramebufferUpdate: one Raw rectangle of the whole screen."""
    size = width * height * 4
    pixels = (bytes(range(256)) * (size // 256 + 1))[:size]
    head = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, width, height, 0)
    return head + pixels


def handshake(io: Stdio, width: int, height: int) -> None:
    io.sendall(VERSION)
    if io.read_exact(12) != VERSION:
        raise SystemExit("rfbsink: the client does not speak RFB 3.8")
    io.sendall(b"\x01\x01")  # one security type: None
    if io.read_exact(1) != b"\x01":
        raise SystemExit("rfbsink: the client chose a security type other than None")
    io.sendall(struct.pack(">I", 0))
    io.read_exact(1)  # ClientInit (shared flag)
    io.sendall(struct.pack(">HH", width, height) + PIXEL_FORMAT + struct.pack(">I", len(NAME)))
    io.sendall(NAME)


def header_size(head: bytes | bytearray) -> int | None:
    """Bytes of the message header starting ``head`` (a cut text's text not included)."""
    kind = head[0]
    if kind in FIXED:
        return FIXED[kind]
    if kind == 6:  # ClientCutText: type, 3 pad, u32 length, then the text (skipped)
        return 8
    if kind == 2:  # SetEncodings: type, pad, u16 count, count x s32
        return None if len(head) < 4 else 4 + 4 * struct.unpack_from(">H", head, 2)[0]
    raise SystemExit(f"rfbsink: unknown client message type {kind}")


def serve(io: Stdio, width: int, height: int) -> int:
    """Answer client messages until EOF; return the clipboard bytes received."""
    frame = update(width, height)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    head = bytearray()
    skip = 0  # text bytes of a ClientCutText still to come
    cut = 0
    while True:
        n = io.recv_into(view)
        if not n:
            return cut
        pos = 0
        while pos < n:
            if skip:
                take = min(skip, n - pos)
                skip -= take
                cut += take
                pos += take
                continue
            size = header_size(head) if head else 1
            want = 4 if size is None else size  # SetEncodings: its count first
            take = min(want - len(head), n - pos)
            head += view[pos : pos + take]
            pos += take
            size = header_size(head)
            if size is None or len(head) < size:
                continue  # more of this header to come
            kind = head[0]
            if kind == 3:
                io.sendall(frame if head[1] else BELL)
            elif kind == 6:
                skip = struct.unpack_from(">I", head, 4)[0]
            head.clear()


def main() -> None:
    width, height = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (1024, 1024)
    io = Stdio()
    with contextlib.suppress(EOFError, ConnectionError, BrokenPipeError):
        handshake(io, width, height)
        serve(io, width, height)


if __name__ == "__main__":
    main()
