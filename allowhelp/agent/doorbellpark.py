"""Session helpers parked by the doorbell (standard library only, like the doorbell).

A signed-in user's session helper (``allowhelp-agent session``) stays connected to
the machine service's socket. It needs the full agent only when the broker rings
(a request for that user), so while no full agent runs the doorbell accepts it,
reads nothing of it (its hello waits in the socket), and hands it to the next full
agent it starts (``ALLOWHELP_ADOPT_FDS``), which takes such connections before its
tunnel's Hello, so the broker hears who is signed in. Any other first packet (a
CLI request) needs the full agent at once. When the full agent ends, its helpers
lose it, connect again after a second, and are parked here again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import time

from allowhelp.agent.localpath import MAX_ADOPTED

log = logging.getLogger(__name__)

FIRST_PACKET_WAIT = 10.0  # a connection that says nothing is dropped (the hub's IDLE_TIMEOUT)


def is_helper_hello(data: bytes) -> bool:
    """Whether a first packet is a session helper's hello (``protocol/helper.py``'s
    ``HelperHello``, type "helper"), read without that module."""
    try:
        packet = json.loads(data)
    except ValueError:
        return False
    return isinstance(packet, dict) and packet.get("type") == "helper"


class HelperPark:
    """Connections accepted on the machine socket while no full agent runs."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self.parked: list[socket.socket] = []  # helpers, their hello unread
        self.unsaid: dict[socket.socket, float] = {}  # accepted, first packet not in yet

    @property
    def full(self) -> bool:
        return len(self.parked) + len(self.unsaid) >= MAX_ADOPTED

    def accept(self, listener: socket.socket) -> None:
        """Every connection waiting on ``listener``, watched until its first packet."""
        while not self.full:
            try:
                conn, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("helper socket: accept failed: %s", exc)
                return
            conn.setblocking(False)
            self.unsaid[conn] = time.monotonic()
            self._selector.register(conn, selectors.EVENT_READ, conn)

    def first_packet(self, conn: socket.socket) -> bool:
        """Look at what ``conn`` said first (left in the socket for the full agent).
        True when the full agent is needed now: not a helper's hello."""
        try:
            data = conn.recv(65536, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        self._forget(conn)
        if not data:  # hung up before saying anything
            conn.close()
            return False
        self.parked.append(conn)
        if not is_helper_hello(data):
            return True
        log.info("a session helper waits for the full agent (parked: %d)", len(self.parked))
        return False

    def expire(self) -> None:
        now = time.monotonic()
        for conn, since in list(self.unsaid.items()):
            if now - since > FIRST_PACKET_WAIT:
                self._forget(conn)
                conn.close()

    def hand_over(self) -> list[socket.socket]:
        """Every connection, for the full agent being started (the caller closes its
        copies once the child has them)."""
        conns = [*self.parked, *self.unsaid]
        for conn in list(self.unsaid):
            self._forget(conn)
        self.parked = []
        return conns

    def close(self) -> None:
        for conn in self.hand_over():
            conn.close()

    def _forget(self, conn: socket.socket) -> None:
        self.unsaid.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
