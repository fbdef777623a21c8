"""A local TCP sink/source for the ``ssh -L`` and raw-loopback baselines.

Protocol, one request per connection: the client sends ``U`` or ``D`` and an
8-byte big-endian size. ``U``: the client then sends that many bytes and the
server answers ``K`` once it has them all. ``D``: the server sends that many
bytes. Threads and blocking sockets with large buffers: the sink is never the
bottleneck (it reaches several GB/s on loopback).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

CHUNK = 1 << 20


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock`` (ConnectionError if it closes first)."""
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ConnectionError("peer closed early")
        data += more
    return data


def _drain(sock: socket.socket, size: int) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = size
    while left:
        got = sock.recv_into(view, min(left, CHUNK))
        if not got:
            raise ConnectionError("peer closed early")
        left -= got


def _pour(sock: socket.socket, size: int) -> None:
    block = b"a" * CHUNK
    left = size
    while left:
        n = min(left, CHUNK)
        sock.sendall(block[:n] if n < CHUNK else block)
        left -= n


class SinkServer:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            head = recv_exact(conn, 9)
            op, size = head[:1], struct.unpack(">Q", head[1:])[0]
            if op == b"U":
                _drain(conn, size)
                conn.sendall(b"K")
            elif op == b"D":
                _pour(conn, size)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def transfer(port: int, direction: str, size: int) -> float:
    """Seconds to move ``size`` bytes through 127.0.0.1:port (``up`` or ``down``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        if direction == "up":
            sock.sendall(b"U" + struct.pack(">Q", size))
            _pour(sock, size)
            if recv_exact(sock, 1) != b"K":
                raise ConnectionError("no acknowledgement")
        else:
            sock.sendall(b"D" + struct.pack(">Q", size))
            _drain(sock, size)
        return time.perf_counter() - start
