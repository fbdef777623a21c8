"""Session helpers parked by the doorbell (standard library only, like the doorbell).

A signed-in user's session helper (``allowhelp-agent session``) stays connected to
the machine service's socket. It needs the full agent only when the broker rings
(a request for that user), so while no full agent runs the doorbell accepts it,
reads nothing of it (its hello waits in the socket), and hands it to the next full
agent it starts (``ALLOWHELP_ADOPT_FDS``), which takes such connections before its
tunnel's Hello, so the broker hears who is signed in. Any other first packet (a
CLI request) needs the full agent at once. When the full agent ends, its helpers
lose it, connect again after a second, and are parked here again.

What each parked helper said (its hello, peeked) and its kernel-given uid
(``SO_PEERCRED``) are kept, so the doorbell can tell the broker who is signed in
while idle (``doorbellseen.py``); a parked helper's hang-up (its user logged out)
is seen with ``POLLRDHUP`` without reading its hello.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

from allowhelp.agent.localpath import MAX_ADOPTED
from allowhelp.protocol.hostile_json import ProtocolError, parse_json

log = logging.getLogger(__name__)

FIRST_PACKET_WAIT = 10.0  # a connection that says nothing is dropped (the hub's IDLE_TIMEOUT)
# The peer shut its side (Linux's value where the module lacks the name): seen with the
# hello still unread, which keeps POLLIN set for as long as the connection is parked.
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HANG_UP = POLLRDHUP | select.POLLHUP | select.POLLERR
# The longest packet the machine service decodes (protocol/helper.py's MAX_PACKET,
# copied: that module is not for the idle process; a house test keeps them equal).
MAX_HELPER_PACKET = 16 * 1024
MAX_HELPER_DEPTH = 3  # and its MAX_DEPTH
# What a helper's hello may say (protocol/helper.py's limits), else it is no helper's
# the full agent would take.
HELLO_TEXT = {
    "language": 100,
    "screen": 20,
    "screen_problem": 300,
    "desktop": 200,
    "monitors": 2000,
}
HELLO_FLAGS = ("files_view_only",)  # its true-or-false fields (unset: false)


@dataclass(frozen=True)
class ParkedHelper:
    """A parked session helper: in the order parked, its uid, what its hello said."""

    order: int
    uid: int
    said: dict[str, str] = field(default_factory=dict)


def peer_uid(conn: socket.socket) -> int | None:
    """The kernel's uid of ``conn``'s peer (``SO_PEERCRED``); None if it cannot say."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", raw)[1])


def first_object(data: bytes) -> object:
    """``data`` parsed as the machine service's decoder parses it, or None where that
    decoder refuses it: longer than its packet bound, nested deeper than it allows,
    not UTF-8 or not JSON (``hostile_json``, standard library only). Unguarded, a
    deep packet's ``RecursionError`` (no ``ValueError``) once ended the root service."""
    if len(data) > MAX_HELPER_PACKET:
        return None
    try:
        return parse_json(data, "hello", MAX_HELPER_DEPTH)
    except ProtocolError:
        return None


def helper_said(data: bytes) -> dict[str, str] | None:
    """A helper's hello's fields as the machine service would take them, or None when
    ``data`` is not a helper's hello it would take (a field of the wrong type or size)."""
    packet = first_object(data)
    if not isinstance(packet, dict) or packet.get("type") != "helper":
        return None
    if any(not isinstance(packet.get(name, False), bool) for name in HELLO_FLAGS):
        return None
    said: dict[str, str] = {}
    for name, limit in HELLO_TEXT.items():
        value = packet.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            return None
        said[name] = value
    return said


def is_helper_hello(data: bytes) -> bool:
    """Whether a first packet is a session helper's hello (``protocol/helper.py``'s
    ``HelperHello``, type "helper"), read without that module."""
    packet = first_object(data)
    return isinstance(packet, dict) and packet.get("type") == "helper"


class HelperPark:
    """Connections accepted on the machine socket while no full agent runs."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self.parked: list[socket.socket] = []  # helpers, their hello unread
        self.unsaid: dict[socket.socket, float] = {}  # accepted, first packet not in yet
        self.helpers: dict[socket.socket, ParkedHelper] = {}  # the parked helpers' words
        self._hangups = select.poll()  # the parked helpers, watched for a hang-up only
        self._order = 0
        self.changed = False  # a helper was parked or hung up since the caller looked

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
        said, uid = helper_said(data), peer_uid(conn)
        if said is not None and uid is not None:  # else the full agent refuses it
            self._order += 1
            self.helpers[conn] = ParkedHelper(self._order, uid, said)
            self._hangups.register(conn.fileno(), HANG_UP)
            self.changed = True
        log.info("a session helper waits for the full agent (parked: %d)", len(self.parked))
        return False

    def hung_up(self) -> None:
        """Drop the parked helpers whose peer has gone (a logout), unread: no wait."""
        gone = {fd for fd, _events in self._hangups.poll(0)}
        for conn in [c for c in self.helpers if c.fileno() in gone]:
            self._hangups.unregister(conn.fileno())
            del self.helpers[conn]
            self.parked.remove(conn)
            conn.close()
            self.changed = True
            log.info("a parked session helper hung up (parked: %d)", len(self.parked))

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
        for conn in self.helpers:
            self._hangups.unregister(conn.fileno())
        self.helpers.clear()
        self.parked = []
        return conns

    def close(self) -> None:
        for conn in self.hand_over():
            conn.close()

    def _forget(self, conn: socket.socket) -> None:
        self.unsaid.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
