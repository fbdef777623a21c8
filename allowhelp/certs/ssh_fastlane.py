"""A channel's data packets straight through, both ways, on an established tunnel (asyncssh 2.24.1).

A keystroke and its echo are one ``MSG_CHANNEL_DATA`` each way at each end. In
asyncssh each one walks its general layers: on receipt, the input buffer is
concatenated and sliced, the packet header and body parsed in two steps, an
``SSHPacket`` built, the handler found, logging and awaitable checks made; on
sending, ``SSHChannel.write`` queues a ``bytearray`` in the channel's send
buffer and ``_flush_send_buf`` takes it out again. And ``GCMCipher`` builds a
new ``AESGCM`` (a key schedule) for every packet it seals or opens. On the
keystroke's path that code is cold at every hop, and it was most of what was
left of the Python per round trip (docs/benchmarks.md §7j).

* :func:`receive_now` opens the complete ``MSG_CHANNEL_DATA`` packets at the
  head of what the socket gave and hands each one's data to its channel's
  ``_accept_data`` (asyncssh's own window, pause and delivery rules), as
  ``_recv_packet`` would. At the first packet that is anything else (another
  type, a channel that is not open or whose window it exceeds, a bad tag, an
  unfinished packet), it stops *before* committing that packet: the cipher's
  nonce and the sequence number are as they were, and the rest of the bytes
  stay in the input buffer for asyncssh's own ``_recv_data``, which opens that
  packet again. The broker's connection class has it as :class:`FastLaneReceive`,
  the agent's connection by :func:`take_data_packets`.
* :func:`write_data` is ``chan.write`` for data that fits the peer's window and
  one packet while nothing waits in the channel's send buffer: it goes out at
  once through ``ssh_fastpaths.send_now``. Anything else is ``chan.write``.
* Both ends seal and open with one ``AESGCM`` per cipher (``ssh_fastpaths.aead``)
  and advance the nonce as ``GCMCipher._update_iv`` does.

Only while the connection is authenticated, no key exchange runs, the cipher is
AES-GCM, nothing is compressed and asyncssh's debug level is below 2 (where it
would log each packet or each data message); otherwise asyncssh does it all.
Once what a packet delivered has closed the connection, the lane reads no
further (asyncssh closes the channels with it, which drop what comes after).
The first packet of a read that is not a data packet is opened twice, by the
lane and by asyncssh: at most twice the AES-GCM work for what a peer sends
other than data, never more.
The private names (``RECEIVE_STATE``, ``CHANNEL_STATE``) are checked against
asyncssh 2.24.1 by ``tests/house/test_private_surfaces.py``.
"""

from __future__ import annotations

import types
from typing import Any

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import DisconnectError
from cryptography.exceptions import InvalidTag

from allowhelp.certs.ssh_fastpaths import MASK64, aead, send_now

TAG = 16  # AES-GCM's tag: the packet's MAC
DATA_DEBUG_LEVEL = 2  # asyncssh logs each data message from this level on
_PKTHDR = SSHConnection._recv_pkthdr
_PROCESS_DATA = SSHChannel._process_data
# The connection's and channels' state the fast lane reads and writes, as asyncssh does.
RECEIVE_STATE = (
    "_recv_data",
    "_inpbuf",
    "_recv_handler",
    "_recv_encryption",
    "_recv_seq",
    "_decompressor",
    "_auth_final",
    "_kex",
    "_kexinit_sent",
    "_max_recv_pktlen",
    "_channels",
)
CHANNEL_STATE = (
    "_recv_state",
    "_recv_window",
    "_send_state",
    "_send_buf",
    "_send_paused",
    "_send_window",
    "_send_pktsize",
    "_send_chan",
    "_encoding",
    "_conn",
)


def receive_now(conn: Any) -> bool:
    """Deliver the ``MSG_CHANNEL_DATA`` packets at the head of the connection's
    input buffer; what is left from the first packet that is not one stays
    there. False when handling a packet raised (answered as ``_recv_data``
    does): asyncssh must not go on; True: it takes the rest, if any.

    One function, not a helper per step: it runs at every keystroke and echo,
    between other processes' turns on the CPU, where Python costs several times
    what it does in a warm loop (docs/benchmarks.md §7j)."""
    encryption = conn._recv_encryption
    if (
        type(encryption) is not GCMEncryption
        or getattr(conn._recv_handler, "__func__", None) is not _PKTHDR  # inside a packet
        or conn._decompressor is not None
        or not conn._auth_final
        or conn._kex is not None
        or conn._kexinit_sent
        or SSHLogger._debug_level >= DATA_DEBUG_LEVEL
    ):
        return True  # all of it is asyncssh's
    cipher: Any = encryption._cipher
    opener = aead(cipher)
    data: bytes = conn._inpbuf
    at, size, channels = 0, len(data), conn._channels
    while size - at >= TAG + 4:
        pktlen = int.from_bytes(data[at : at + 4], "big")
        end = at + 4 + pktlen + TAG
        if end > size or pktlen < TAG - 4 or pktlen > conn._max_recv_pktlen:
            break
        iv = cipher._iv
        try:
            plain = opener.decrypt(iv, data[at + 4 : end], data[at : at + 4])
        except InvalidTag:
            break  # asyncssh says so
        # plain: padding length, payload (type, channel, data length, data), padding
        payload_end = len(plain) - plain[0]
        if plain[0] < 4 or payload_end < 10 or plain[1] != MSG_CHANNEL_DATA:
            break  # asyncssh opens it again: nonce and sequence number untouched
        chan = channels.get(int.from_bytes(plain[2:6], "big"))
        datalen = payload_end - 10
        if (
            chan is None
            or int.from_bytes(plain[6:10], "big") != datalen
            or chan._packet_handlers.get(MSG_CHANNEL_DATA) is not _PROCESS_DATA
            or chan._recv_state != "open"
            or datalen > chan._recv_window
        ):
            break  # asyncssh's to take (or to refuse, as a protocol error)
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & MASK64).to_bytes(8, "big")
        conn._recv_seq = (conn._recv_seq + 1) & 0xFFFFFFFF
        at = end
        try:
            chan._accept_data(plain[10:payload_end])
        except Exception as exc:  # as ``_recv_data``: answered here, not raised into the loop
            _leave(conn, data, at)
            _broke(conn, exc)
            return False
        if conn._transport is None:  # closed by what it delivered: nothing more is read
            _leave(conn, data, at)
            return False
    conn._reset_keepalive_timer()  # as ``_recv_data`` does for every read (after: not urgent)
    _leave(conn, data, at)
    return True


def _leave(conn: Any, data: bytes, at: int) -> None:
    """What is left of ``data`` from ``at`` back in the input buffer (not copied per packet)."""
    if at:
        conn._inpbuf = data[at:]


def take_data_packets(conn: Any) -> None:
    """Route ``conn``'s (an asyncssh connection, running) received bytes through
    :func:`receive_now` first (the broker's class has it as :class:`FastLaneReceive`)."""
    conn._recv_data = types.MethodType(FastLaneReceive._recv_data, conn)


class FastLaneReceive:
    """A mixin before an asyncssh connection class: data packets through :func:`receive_now`."""

    def _recv_data(self: Any) -> None:
        if receive_now(self) and self._inpbuf:
            SSHConnection._recv_data(self)  # what the lane does not take, asyncssh's way


def _broke(conn: Any, exc: Exception) -> None:
    """What ``SSHConnection._recv_data`` does when handling a packet raised ``exc``."""
    if isinstance(exc, DisconnectError):
        conn._send_disconnect(exc.code, exc.reason, exc.lang)
        conn._force_close(exc)
    else:
        conn.internal_error((type(exc), exc, exc.__traceback__))


def write_data(chan: Any, data: bytes) -> None:
    """``chan.write(data)``: at once as one packet when it fits the window and
    nothing waits before it, else through asyncssh's send buffer."""
    size = len(data)
    if (
        not size
        or chan._send_buf
        or chan._send_paused
        or chan._send_state != "open"
        or chan._encoding is not None
        or size > chan._send_window
        or size > chan._send_pktsize
        or chan._send_chan is None
        or SSHLogger._debug_level >= DATA_DEBUG_LEVEL
        or not send_now(
            chan._conn,
            MSG_CHANNEL_DATA,
            (chan._send_chan.to_bytes(4, "big"), size.to_bytes(4, "big"), data),
        )
    ):
        chan.write(data)
        return
    chan._send_window -= size
