"""Less of asyncssh's per-packet Python on the tunnel, same behaviour (asyncssh 2.24.1).

Two costs paid on every packet, at both ends, for every keystroke and echo
(docs/benchmarks.md §7h):

* **The keepalive timer.** ``SSHConnection._recv_data`` calls
  ``_reset_keepalive_timer`` on every read from the socket, which cancels the
  timer and arms a new one (``call_later``): about 1.3 µs each. :class:`LazyKeepalive`
  notes the time instead; when the timer fires and something was received
  since it was armed, it re-arms itself for the rest of the interval. The
  timer therefore fires when it did before (an interval after the last
  packet received) and counts and closes a silent link as before.
* **Packet logging.** ``SSHPacketLogger.log_sent_packet`` and
  ``log_received_packet`` format a description of every packet (the handler's
  name, ``plural``, a copy of the payload) and then hand it to
  ``SSHLogger.packet``, which drops it unless asyncssh's debug level is 3.
  :func:`quiet_packet_logs` makes them return at once below level 3; at level
  3 they log as before.

Private names (``_reset_keepalive_timer``, ``_keepalive_timer``,
``_keepalive_timer_callback``, ``_keepalive_interval``, ``_auth_complete``,
``_set_keepalive_timer``, ``_loop``, ``SSHLogger._debug_level``) are checked
against asyncssh 2.24.1 by ``tests/house/test_private_surfaces.py``.
"""

from __future__ import annotations

import types
from typing import Any

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger

PACKET_DEBUG_LEVEL = 3  # SSHLogger.packet logs only from this level on


class LazyKeepalive:
    """An asyncssh connection's keepalive without re-arming a timer per packet
    (a mixin before the connection class; or :func:`lazy_keepalive` on one)."""

    _keepalive_since: float | None = None  # the last packet received while the timer ran

    def _reset_keepalive_timer(self: Any) -> None:
        if self._auth_complete and self._keepalive_timer is not None:
            self._keepalive_since = self._loop.time()  # the timer looks at it when it fires
        else:  # asyncssh's own: no timer yet, or none wanted
            self._keepalive_since = None
            if self._auth_complete:
                self._cancel_keepalive_timer()
                self._set_keepalive_timer()

    def _keepalive_timer_callback(self: Any) -> None:
        since, self._keepalive_since = self._keepalive_since, None
        if since is not None and self._keepalive_interval:
            rest = since + self._keepalive_interval - self._loop.time()
            if rest > 0:  # heard from the peer since the timer was armed: not yet
                self._keepalive_timer = self._loop.call_later(rest, self._keepalive_timer_callback)
                return
        SSHConnection._keepalive_timer_callback(self)


def lazy_keepalive(conn: asyncssh.SSHServerConnection | asyncssh.SSHClientConnection) -> None:
    """Give ``conn`` (already running) :class:`LazyKeepalive`'s timer, re-armed now."""
    for name in ("_reset_keepalive_timer", "_keepalive_timer_callback"):
        setattr(conn, name, types.MethodType(getattr(LazyKeepalive, name), conn))
    conn._keepalive_since = None  # type: ignore[union-attr]
    if conn._keepalive_timer is not None:
        conn._cancel_keepalive_timer()
        conn._set_keepalive_timer()


_log_sent = SSHPacketLogger.log_sent_packet
_log_received = SSHPacketLogger.log_received_packet


def _log_sent_packet(
    self: SSHPacketLogger, pkttype: int, pktid: int | None, packet: Any, note: str = ""
) -> None:
    if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
        _log_sent(self, pkttype, pktid, packet, note)


def _log_received_packet(
    self: SSHPacketLogger, pkttype: int, pktid: int | None, packet: Any, note: str = ""
) -> None:
    if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
        _log_received(self, pkttype, pktid, packet, note)


def quiet_packet_logs() -> None:
    """asyncssh's packet logging formats nothing below debug level 3 (idempotent)."""
    SSHPacketLogger.log_sent_packet = _log_sent_packet  # type: ignore[method-assign]
    SSHPacketLogger.log_received_packet = _log_received_packet  # type: ignore[method-assign]
