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

* **The packet's send.** ``SSHConnection.send_packet`` checks for a due rekey,
  for packets to defer and for the empty ``MSG_IGNORE`` to send first
  (``ssh_packets.py`` drops it under an AEAD cipher), then pads with
  ``os.urandom(padlen)``: a ``getrandom`` system call for 4 to 19 bytes on every
  packet. :func:`send_now` is the same send for the usual packet of an
  established connection (authenticated, no key exchange running or due, an AEAD
  cipher, no compression, packet logging off): the padding comes from
  :class:`RandomPool`, random bytes from ``os.urandom`` taken 4 KiB at a time, each
  byte used once. Anything else returns False, for asyncssh's own ``send_packet``.

Private names (``_reset_keepalive_timer``, ``_keepalive_timer``,
``_keepalive_timer_callback``, ``_keepalive_interval``, ``_auth_complete``,
``_set_keepalive_timer``, ``_loop``, ``SSHLogger._debug_level``; for :func:`send_now`
the names in ``SEND_STATE``) are checked
against asyncssh 2.24.1 by ``tests/house/test_private_surfaces.py``.
"""

from __future__ import annotations

import os
import threading
import time
import types
from typing import Any

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_USERAUTH_LAST
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PACKET_DEBUG_LEVEL = 3  # SSHLogger.packet logs only from this level on
AEAD = (GCMEncryption, ChachaEncryption)
MASK64 = 0xFFFFFFFFFFFFFFFF
POOL_BLOCK = 4096  # random bytes fetched at once: about 340 packets' padding
# The connection's state ``send_now`` reads and writes, as ``send_packet`` does.
SEND_STATE = (
    "_send_encryption",
    "_auth_complete",
    "_kex_complete",
    "_compressor",
    "_rekey_bytes",
    "_rekey_bytes_sent",
    "_rekey_seconds",
    "_rekey_time",
    "_send_enchdrlen",
    "_send_blocksize",
    "_send_seq",
)


class RandomPool(threading.local):
    """Random bytes from ``os.urandom``, fetched ``POOL_BLOCK`` at a time, each
    handed out once (one pool per thread: no two callers get the same bytes;
    one per process, not per connection: a broker holds thousands of them)."""

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        at = self._at
        if at + size > len(self._block):
            self._block, at = os.urandom(max(POOL_BLOCK, size)), 0
        self._at = at + size
        return self._block[at : at + size]


PADDING = RandomPool()


def aead(cipher: Any) -> AESGCM:
    """The ``AESGCM`` of ``cipher`` (a ``GCMCipher``), made once: ``GCMCipher`` makes
    one, a key schedule, for every packet (the key is the cipher's for its whole
    life; a rekey makes a new cipher)."""
    try:
        made: AESGCM = cipher._allowhelp_aead
    except AttributeError:
        made = cipher._allowhelp_aead = AESGCM(cipher._key)
    return made


def send_now(conn: Any, pkttype: int, args: tuple[bytes, ...]) -> bool:
    """Send one packet as asyncssh 2.24.1's ``send_packet`` would on an
    established AEAD connection, without its empty ignore; False (nothing sent)
    when the packet needs asyncssh's own path."""
    encryption = conn._send_encryption
    if (
        pkttype <= MSG_USERAUTH_LAST
        or not conn._kex_complete
        or not conn._auth_complete
        or not isinstance(encryption, AEAD)
        or conn._compressor is not None
        or conn._rekey_bytes_sent >= conn._rekey_bytes
        or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
        or SSHLogger._debug_level >= PACKET_DEBUG_LEVEL
    ):
        return False
    payload = bytes((pkttype,)) + b"".join(args)
    blocksize = conn._send_blocksize
    padlen = -(conn._send_enchdrlen + len(payload)) % blocksize
    if padlen < 4:
        padlen += blocksize
    packet = bytes((padlen,)) + payload + PADDING.take(padlen)
    pktlen = len(packet)
    seq = conn._send_seq
    header = pktlen.to_bytes(4, "big")
    if type(encryption) is GCMEncryption:  # ``GCMCipher.encrypt_and_sign``, one AESGCM
        cipher: Any = encryption._cipher
        iv = cipher._iv
        sealed = header + aead(cipher).encrypt(iv, packet, header)
        # ``GCMCipher._update_iv``: the 64-bit invocation counter after the fixed field, plus one
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & MASK64).to_bytes(8, "big")
    else:
        packet, mac = encryption.encrypt_packet(seq, header, packet)
        sealed = packet + mac
    conn._send_seq = (seq + 1) & 0xFFFFFFFF  # all counted before the send: a nonce is never reused
    conn._rekey_bytes_sent += pktlen
    conn._send(sealed)
    return True


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

    def set_keepalive(
        self: Any, interval: float | str | None = None, count_max: int | None = None
    ) -> None:
        """asyncssh's, with the armed timer dropped first: a new interval (or none)
        applies from now, as it does there (the lazy timer would keep the old one)."""
        self._keepalive_since = None
        self._cancel_keepalive_timer()
        SSHConnection.set_keepalive(self, interval, count_max)

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
    for name in ("_reset_keepalive_timer", "_keepalive_timer_callback", "set_keepalive"):
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
