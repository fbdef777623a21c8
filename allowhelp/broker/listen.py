"""Listening sockets, bound before anything is announced (so port 0 works)."""

from __future__ import annotations

import socket

from allowhelp.broker.settings import format_hostport

BACKLOG = 1024


def bind(host: str, port: int, *, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {format_hostport(host, port)}: {exc.strerror}") from exc
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
