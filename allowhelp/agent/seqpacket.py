"""Packets over a local ``SOCK_SEQPACKET`` socket, on the event loop, with file descriptors.

The machine service and its session helpers talk through this (and the CLI
through ``request``). Seqpacket keeps message boundaries, so a packet is one
JSON object and a file descriptor passed with it (``SCM_RIGHTS``) belongs to
that packet and no other. A packet longer than the cap arrives truncated
(``MSG_TRUNC``) and is refused, never parsed; descriptors nobody expects are
closed at once, so a peer cannot fill the service's descriptor table.

A peer that does not read what it is sent (its socket buffer full) is
dropped rather than waited for: the service never blocks on a user's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence

from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _
from allowhelp.protocol.helper import MAX_PACKET

log = logging.getLogger(__name__)

MAX_FDS = 1  # one descriptor per "opened" packet; more is refused
OnPacket = Callable[["PacketConn", bytes, list[int]], None]


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the peer as the kernel saw it at connect time."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class PacketConn:
    """One connection: ``on_packet(conn, data, fds)`` per packet, ``on_close(conn)`` once."""

    def __init__(
        self,
        sock: socket.socket,
        on_packet: OnPacket,
        on_close: Callable[[PacketConn], None],
    ) -> None:
        self.sock = sock
        self.pid, self.uid = peer_credentials(sock)
        self._on_packet = on_packet
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, fds, flags, _address = socket.recv_fds(self.sock, MAX_PACKET + 1, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("packet connection from uid %d failed: %s", self.uid, exc)
            self.close()
            return
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_PACKET:
            close_fds(fds)
            log.warning("uid %d sent an oversized packet (or too many descriptors)", self.uid)
            self.close()
            return
        if not data:
            close_fds(fds)
            self.close()  # the peer closed its end
            return
        self._on_packet(self, data, fds)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> bool:
        """Send one packet; False (and the connection dropped) if the peer is not reading."""
        if self.closed:
            return False
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
            return True
        except OSError as exc:  # BlockingIOError: its buffer is full; EPIPE: gone
            log.warning("dropped the connection of uid %d: cannot send (%s)", self.uid, exc)
            self.close()
            return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._on_close(self)


def request(path: str, data: bytes, *, expect_uid: int, timeout: float = 30.0) -> bytes:
    """The CLI's side: one packet out, one packet back, to a server run by ``expect_uid``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise AgentError(
                _("the machine service is not running (no %(path)s)") % {"path": path}
            ) from None
        except OSError as exc:
            raise AgentError(
                _("cannot reach the machine service: %(error)s") % {"error": exc.strerror or exc}
            ) from exc
        _pid, server = peer_credentials(sock)
        if server != expect_uid:
            raise AgentError(
                _("%(path)s is served by uid %(server)s, not by the machine service")
                % {"path": path, "server": server}
            )
        sock.send(data)
        try:
            reply = sock.recv(MAX_PACKET + 1)
        except TimeoutError:
            raise AgentError(_("the machine service did not answer in time")) from None
    if not reply:
        raise AgentError(_("the machine service closed the connection without an answer"))
    return reply
