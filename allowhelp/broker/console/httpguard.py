"""Deadlines and size caps for the request head, below the ASGI app.

uvicorn gives a connection forever to send its request line and headers, and
keeps every header byte it is sent: one slow or bloated client per socket is
enough to tie the broker up (slowloris). This protocol class wraps uvicorn's
httptools protocol and adds, per request:

* a deadline for the whole head (request line + headers), from the
  connection's first moment or the request's first byte → 408 and close;
* a cap on the head's size → 431 and close;
* a deadline for the body once the head is in → 408 and close.

The ASGI app and the Wall never see such a request. It is passed to uvicorn
as ``Config(http=GuardedHttpProtocol)``.

Every TCP connection also gets deadlines of its own (``tcp_deadlines``): data
unacknowledged for ``UNACKED_LIMIT`` s breaks it (``TCP_USER_TIMEOUT``), and an
idle one is probed (keepalive). A PC that loses power under a standing doorbell
(a long response that only writes) is then offline within a minute, not after
the kernel's ~15 minutes of retransmissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from allowhelp.broker.console.wall import is_file_upload

log = logging.getLogger(__name__)

UNACKED_LIMIT = 60.0  # s: beats every 20 s, so a vanished doorbell is seen within a minute
KEEPALIVE = (30, 10, 3)  # idle s, interval s, probes


def tcp_deadlines(sock: socket.socket | None) -> None:
    """``TCP_USER_TIMEOUT`` and keepalive on a TCP connection (Linux); anything else
    (a Unix socket, an option this kernel lacks) is left as it is."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(UNACKED_LIMIT * 1000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


@dataclass(frozen=True)
class HeadLimits:
    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_head_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if not 0.5 <= self.header_timeout <= 120:
            raise ValueError("the request header deadline must be 0.5 to 120 seconds")
        if not 1 <= self.body_timeout <= 600:
            raise ValueError("the request body deadline must be 1 to 600 seconds")
        if not 1024 <= self.max_head_bytes <= 1024 * 1024:
            raise ValueError("the request head limit must be 1 KiB to 1 MiB")


LIMITS = HeadLimits()


def _reply(status: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n"
        b"connection: close\r\n\r\n"
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    limits = LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._refused = False
        self._streamed = False  # a file upload: as long as its chunks keep coming

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tcp_deadlines(transport.get_extra_info("socket"))
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._timer is None:  # the first request keeps the deadline set at connect
            self._arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_head_bytes:  # it all came in one read
            self._too_large()
            return
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.limits.body_timeout)  # a WebSocket leaves this protocol at once
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        self._streamed = is_file_upload(self.parser.get_method().decode("latin-1"), path)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            if self._streamed:  # a file upload: the deadline is for the next chunk
                self._arm(self.limits.body_timeout)
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if not self._refused:
            super().handle_websocket_upgrade()

    def _too_large(self) -> None:
        self._refused = True
        self._give_up(b"431 Request Header Fields Too Large", "request head too large")

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        what = "request head" if self._in_head else "request body"
        self._give_up(b"408 Request Timeout", f"{what} too slow")

    def _give_up(self, status: bytes, why: str) -> None:
        self._disarm()
        if self.transport is None or self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("closed a connection from %s: %s", peer, why)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_reply(status))
        self.transport.close()
