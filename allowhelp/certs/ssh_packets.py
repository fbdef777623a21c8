"""One SSH packet per message on the tunnel, not two: no empty MSG_IGNORE in front of each.

asyncssh (2.24.1, ``SSHConnection.send_packet``) sends an empty ``MSG_IGNORE``
before every packet once the connection is encrypted: RFC 4251 §9.3.1's
countermeasure against the chosen-plaintext attack on CBC mode, whose next IV
is the last ciphertext block. The tunnel's only cipher is aes128-gcm
(``ssh_options.ENCRYPTION_ALGS``), an AEAD with a fresh nonce per packet, which
that attack does not apply to; the extra packet is empty, sent at once with the
real one, so it hides no timing and no size either. What it costs is a second
encryption, a second socket write and, at the other end, a second packet to
read, decrypt and dispatch: per keystroke and per echo, on both ends
(docs/benchmarks.md §7f).

:class:`OnePacketClientConnection` (the broker's, which builds its connections
itself) and :func:`send_one_packet_per_message` (the agent's, on the connection
``connect_reverse`` made) drop those empty ignores while the connection's
outgoing cipher is an AEAD (GCM or chacha20-poly1305); with any other cipher
they go out as before. asyncssh sends the ignore through ``self.send_packet``,
which both override; ``send_packet`` and ``_send_encryption`` are private
names, checked against asyncssh 2.24.1 by ``tests/house/test_private_surfaces.py``.

Both also send the usual packet of an established connection through
``ssh_fastpaths.send_now`` (no padding ``getrandom`` per packet), take
``ssh_fastpaths.py``'s keepalive timer that is not re-armed per packet, and
importing this module quiets asyncssh's packet logging below its debug level 3
(``quiet_packet_logs``: nothing is formatted that would not be logged).
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

from allowhelp.certs.ssh_fastlane import FastLaneReceive, take_data_packets
from allowhelp.certs.ssh_fastpaths import (
    AEAD,
    LazyKeepalive,
    lazy_keepalive,
    quiet_packet_logs,
    send_now,
)

EMPTY = String(b"")

quiet_packet_logs()  # both ends import this module before their first connection


def needless_ignore(conn: object, pkttype: int, args: tuple[bytes, ...]) -> bool:
    """An empty MSG_IGNORE that ``conn`` is about to send under an AEAD cipher."""
    return (
        pkttype == MSG_IGNORE
        and args == (EMPTY,)
        and isinstance(getattr(conn, "_send_encryption", None), AEAD)
    )


class OnePacketClientConnection(FastLaneReceive, LazyKeepalive, asyncssh.SSHClientConnection):
    """The broker's tunnel connection: no empty MSG_IGNORE before each packet,
    no keepalive timer re-armed per packet, data packets through the fast lane
    (a subclass, not a wrapper per connection: a broker holds thousands)."""

    def send_packet(self, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if not send_now(self, pkttype, args) and not needless_ignore(self, pkttype, args):
            super().send_packet(pkttype, *args, **kwargs)


def send_one_packet_per_message(conn: asyncssh.SSHServerConnection) -> None:
    """Stop the agent's ``conn`` putting an empty MSG_IGNORE before each packet
    (and re-arming its keepalive timer on each one it receives); its data packets
    come in through the fast lane (``ssh_fastlane.py``)."""
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if not send_now(conn, pkttype, args) and not needless_ignore(conn, pkttype, args):
            send(pkttype, *args, **kwargs)

    conn.send_packet = send_packet  # type: ignore[method-assign]
    lazy_keepalive(conn)
    take_data_packets(conn)
