"""The broker's side of every tunnel's SSH: one options object for all, and what
each connection keeps kept small.

A broker holds tens of thousands of idle tunnels, so what each one keeps
matters (``bench --only memory``): no per-connection options object, and the
peer's ``server-sig-algs`` set shared between connections that sent the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from allowhelp.certs import ssh_options
from allowhelp.certs.ssh_packets import OnePacketClientConnection

LOGIN_TIMEOUT = 15.0  # a handshake takes well under a second; idle ones make room
SHARED_SIG_ALGS = 16  # distinct server-sig-algs sets kept for sharing; agents send one


def client_options(
    key: asyncssh.SSHKey, factory: Callable[[], asyncssh.SSHClient]
) -> asyncssh.SSHClientConnectionOptions:
    """The broker's side of every tunnel, shared by all of them (``start_client``)."""
    return asyncssh.SSHClientConnectionOptions(
        username=ssh_options.BROKER_USERNAME,
        client_keys=[key],
        agent_path=None,
        known_hosts=([], [], []),  # empty, not None: every key goes to accept_key
        # Nothing from the operator's home: not ~/.ssh/config (config=None), not
        # ~/.ssh/ca-bundle.crt or ~/.ssh/crt (a service user's HOME may not even be
        # readable): the broker's SSH is configured here and nowhere else.
        config=None,
        x509_trusted_certs=None,
        x509_trusted_cert_paths=[],
        server_host_key_algs=list(ssh_options.HOST_KEY_ALGS),
        encryption_algs=list(ssh_options.ENCRYPTION_ALGS),
        kex_algs=list(ssh_options.KEX_ALGS),
        signature_algs=list(ssh_options.SIGNATURE_ALGS),
        mac_algs=list(ssh_options.MAC_ALGS),
        compression_algs=list(ssh_options.COMPRESSION_ALGS),
        preferred_auth=["publickey"],
        keepalive_interval=ssh_options.BROKER_KEEPALIVE_INTERVAL,
        keepalive_count_max=ssh_options.BROKER_KEEPALIVE_COUNT_MAX,
        login_timeout=LOGIN_TIMEOUT,
        client_factory=factory,
    )


def start_client(
    loop: asyncio.AbstractEventLoop,
    options: asyncssh.SSHClientConnectionOptions,
    finished: asyncio.Future[None],
    address: str,
) -> asyncssh.SSHClientConnection:
    """One SSH client connection on the shared ``options``; ``finished`` is set
    once it is authenticated, or fails.

    This is what ``asyncssh.listen_reverse`` does per accepted connection
    (checked against asyncssh 2.24.1): ``run_client`` would instead copy
    the options in a thread for every connection (``construct``: a 2 KiB
    object kept per tunnel, a ``getpass.getuser()`` and a thread hop per
    handshake). Without ``wait`` the connection never touches
    ``options.waiter``, so sharing the options is safe; asyncssh calls
    the acceptor after authentication and the error handler when the
    handshake fails (login timeout included), and never both.
    """

    def accepted(conn: object) -> None:
        if not finished.done():
            finished.set_result(None)

    def failed(conn: object, exc: Exception | None) -> None:
        if not finished.done():
            finished.set_exception(exc or asyncssh.ConnectionLost("connection lost"))

    # no empty MSG_IGNORE before each packet (ssh_packets.py)
    conn = OnePacketClientConnection(loop, options, accepted, failed)
    # A tunnel bridged from the HTTPS port runs on a socketpair, which has no
    # TCP peer: asyncssh then takes the peer from here (its public extra info).
    conn.set_extra_info(remote_peername=(address, 0))
    return conn


class SharedSigAlgs:
    """The distinct ``server-sig-algs`` sets agents sent, one shared copy each."""

    def __init__(self) -> None:
        self._sets: dict[frozenset[bytes], frozenset[bytes]] = {}

    def share(self, conn: asyncssh.SSHClientConnection) -> None:
        """Swap the peer's ``server-sig-algs`` set for an equal shared one.

        asyncssh keeps it as a fresh set per connection (1.6 KiB per agent,
        ``bench --only memory``) although every agent sends the same list,
        and reads it only to choose a signature algorithm for our own
        public-key authentication, which is over once this runs. Private
        attribute, checked against asyncssh 2.24.1; if it is gone or not a
        set, nothing is changed. At most ``SHARED_SIG_ALGS`` distinct sets
        are kept, so odd agents cannot grow the table.
        """
        algs = getattr(conn, "_server_sig_algs", None)
        if not isinstance(algs, set):
            return
        key = frozenset(algs)
        shared = self._sets.get(key)
        if shared is None:
            if len(self._sets) >= SHARED_SIG_ALGS:
                return
            shared = self._sets.setdefault(key, key)
        conn._server_sig_algs = shared  # type: ignore[assignment]  # read-only use
