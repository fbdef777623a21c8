"""SSH algorithm choices shared by both ends of the tunnel.

Each end offers exactly one algorithm of each kind, the one the other end
uses: the agent and the broker are the same software, so there is nothing to
negotiate, and a peer that offers anything else finds no match and is
refused during the key exchange (``tests/tunnel/test_tunnel_algorithms.py``).
A downgrade has nothing to land on. Fewer names also make every KEXINIT and
the server's ``server-sig-algs`` shorter, on each of a fleet's handshakes.

* key exchange: curve25519-sha256 (RFC 8731; the ``@libssh.org`` name is the
  same algorithm under its old name, so it was only ever a second spelling).
* host key and signatures: Ed25519 only: no certificates, no X.509, so the
  key *is* the identity (the agent's host key, the broker's login key).
* cipher: aes128-gcm: with AES-NI it runs 1.6-2x the speed of
  chacha20-poly1305 on this class of machine (docs/benchmarks.md §1), and it
  is an AEAD, so the MAC list is never used; it is kept to the one
  encrypt-then-MAC choice in case a cipher without its own MAC is ever added.

Agents of the previous releases offered these first in longer lists, so they
still agree with a broker that offers only these, and the other way round.
"""

from __future__ import annotations

ENCRYPTION_ALGS = ("aes128-gcm@openssh.com",)
KEX_ALGS = ("curve25519-sha256",)
HOST_KEY_ALGS = ("ssh-ed25519",)
SIGNATURE_ALGS = ("ssh-ed25519",)
MAC_ALGS = ("hmac-sha2-256-etm@openssh.com",)
COMPRESSION_ALGS = ("none",)

# The agent sends a keepalive after 15 s without a packet from the broker and
# gives up after 3 unanswered, so it notices a dead broker within 60 s (15 x 4)
# even when TCP itself never says so, and redials.
KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3

# The broker's timer is longer than the agent's on purpose. asyncssh restarts
# the keepalive timer on every packet received (2.24.1: ``_recv_data`` calls
# ``_reset_keepalive_timer``), so while an agent is alive its keepalive every
# 15 s arrives before the broker's 20 s are up and the broker never sends one
# of its own, only answers: half the idle keepalive traffic. Measured with
# 5,000 idle agents (bench --only fleet): broker idle CPU 9.7-10.0 % of a core
# with both ends at 15 s, 7.8-8.0 % with this. A silent dead agent is still
# dropped after 60 s without a packet (20 s x (2 + 1)), the same bound as the
# agent's, so it shows offline within a minute.
BROKER_KEEPALIVE_INTERVAL = 20.0
BROKER_KEEPALIVE_COUNT_MAX = 2

# Session channels (shell, screen) carry up to 128 KiB per SSH packet instead
# of asyncssh's 32 KiB: a quarter of the packets, encryptions and socket writes
# per MB. Measured on the tunnel alone, this is worth 1.6-2x *with* the malloc
# thresholds of allowhelp.runtime.tune_malloc and halves the download rate
# without them (docs/benchmarks.md), so both processes apply those at start.
# The window holds 16 packets, so a channel never waits on one.
CHANNEL_PACKET_SIZE = 128 * 1024
CHANNEL_WINDOW = 16 * CHANNEL_PACKET_SIZE

# The name the broker logs in with; the agent accepts no other.
BROKER_USERNAME = "allowhelp-broker"
