"""A hostile VNC server on stdin/stdout, run by the agent instead of x11vnc.

The agent runs it when ``ALLOWHELP_TEST_SCREEN_COMMAND`` names it (tests only).
The file given as the only argument holds the mode, so one agent can play
several servers across tests:

- ``hostile``: a proper handshake (offering a password type too), a desktop
  name with markup and control characters, then a Raw rectangle of
  65535x65535 pixels with a little data and garbage after it.
- ``bad-name``: a ServerInit whose desktop name claims 4 GiB.
- ``huge-screen``: a ServerInit of 65535x65535 pixels.
"""

from __future__ import annotations

import io
import struct
import sys
import time
from pathlib import Path
from typing import cast

NAME = "<img src=x onerror=alert(1)>\x1b[31m\u202eevil".encode()
PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


def stdin() -> io.BufferedReader:
    """Standard input as bytes; typeshed calls it a ``BinaryIO``, which has no ``read1``."""
    return cast(io.BufferedReader, sys.stdin.buffer)


def read(size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stdin().read1(size - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def send(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def handshake() -> None:
    send(b"RFB 003.008\n")
    read(12)
    send(bytes([2, 2, 1]))  # VNC authentication first: the broker must narrow it
    read(1)
    send(struct.pack(">I", 0))
    read(1)


def main() -> None:
    mode = Path(sys.argv[1]).read_text().strip()
    handshake()
    if mode == "bad-name":
        send(struct.pack(">HH", 64, 48) + PIXEL_FORMAT + struct.pack(">I", 0xFFFFFFFF) + b"x" * 64)
    elif mode == "huge-screen":
        send(struct.pack(">HH", 65535, 65535) + PIXEL_FORMAT + struct.pack(">I", 4) + b"huge")
    else:
        send(struct.pack(">HH", 64, 48) + PIXEL_FORMAT + struct.pack(">I", len(NAME)) + NAME)
        read(1)  # the client's first message, whatever it is
        rect = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 65535, 65535, 0)
        send(rect + b"\xff" * 4096 + bytes(range(256)) * 16)
    while True:  # stay up until the agent closes us
        if not stdin().read1(4096):
            return
        time.sleep(0.01)


if __name__ == "__main__":
    main()
