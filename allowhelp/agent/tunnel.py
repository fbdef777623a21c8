"""The agent's tunnel: dial the broker, run the SSH *server* side, never give up.

The PC never listens: it dials out and then plays SSH server on the
connection it opened (``asyncssh.connect_reverse``). Only the broker key pinned
at enrolment may log in, and the server refuses every channel, forwarding and
request unless the consent gate has a live grant for it (deny by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from allowhelp.agent.channels import AgentSSHServer, FilesFactory, ScreenFactory, ShellFactory
from allowhelp.agent.config import HOST_KEY_FILE
from allowhelp.agent.i18n import _
from allowhelp.agent.peers import Endpoint, KnownNodes, ahead_of
from allowhelp.agent.proxy import check_setting, open_connection, proxy_for
from allowhelp.agent.service import AgentService
from allowhelp.agent.woken import rung_from
from allowhelp.certs import ssh_options
from allowhelp.certs.ssh_packets import send_one_packet_per_message
from allowhelp.certs.sshkeys import load_private_key, parse_public_key, public_key_line

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
STABLE_AFTER = 30.0
ROUTE_NAMES = {"ssh": "the SSH port", "https": "the HTTPS port"}
# After a broker restart the whole fleet dials at once, and the broker lets
# the excess wait in its listen backlog rather than refusing it. An agent that
# gave up after 20 s there backed off and came back later (measured at 19,800
# agents: 8,210 such timeouts, everyone back only after 178 s); one that waits
# is simply served in turn. A broker that accepts but never answers still
# costs an agent only a minute before it redials.
LOGIN_TIMEOUT = 60.0
# An agent on a node it failed over to looks for its first one again every RETURN_EVERY
# times its --reconnect-cap (5 min by default), jittered by half either way, so the
# agents of a node that comes back return over minutes, not all in one second.
RETURN_EVERY = 10
# What one way failing to connect may raise: that way failed; the tunnel tries the next
# one, then again after its backoff. A ValueError is a proxy setting refused for that
# host alone (a node learned later, not in no_proxy): never the end of the agent.
REDIAL_ERRORS = (asyncio.TimeoutError, OSError, ValueError, asyncssh.Error)


def backoff_delay(
    attempt: int, cap: float = BACKOFF_CAP, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Full jitter: spread a fleet's reconnects after a broker restart over the window."""
    return rng(0.0, min(cap, BACKOFF_BASE * 2 ** min(attempt, 16)))


def check_reconnect_cap(seconds: float) -> float:
    if not 1.0 <= seconds <= 600.0:
        raise ValueError(_("--reconnect-cap must be between 1 and 600 seconds"))
    return seconds


@dataclass
class TunnelState:
    connected: bool = False
    attempts: int = 0
    last_error: str = ""


class AgentTunnel:
    def __init__(
        self,
        service: AgentService,
        folder: Path,
        reconnect_cap: float = BACKOFF_CAP,
        screen: ScreenFactory | None = None,
        shell: ShellFactory | None = None,
        *,
        files: FilesFactory | None = None,
    ) -> None:
        self._service = service
        self._screen = screen
        self._shell = shell
        self._files = files
        self._config = config = service.config
        self._cap = check_reconnect_cap(reconnect_cap)
        # A proxy setting that can never work stops the start; one that is down is redialled.
        check_setting(config.dialled_hosts, config.proxy)
        self._host_key = load_private_key(folder / HOST_KEY_FILE)
        self._broker_key = public_key_line(parse_public_key(config.broker_tunnel_key))
        self.state = TunnelState()
        self._preferred: Endpoint | None = None  # the way that worked last: tried first
        # The other broker nodes, learned from the broker (``nodes.list``, ``peers.py``).
        self.nodes = KnownNodes(folder)
        service.nodes = self.nodes
        self._preferred = rung_from(self.nodes.endpoints(config))  # woken: its node first
        self._carriers: set[asyncio.Task[None]] = set()
        self._returned: asyncssh.SSHServerConnection | None = None  # moved back: serve next

    def _options(self) -> asyncssh.SSHServerConnectionOptions:
        return asyncssh.SSHServerConnectionOptions(
            server_host_keys=[self._host_key],
            server_factory=lambda: AgentSSHServer(
                self._service, self._broker_key, self._screen, self._shell, self._files
            ),
            encryption_algs=list(ssh_options.ENCRYPTION_ALGS),
            kex_algs=list(ssh_options.KEX_ALGS),
            signature_algs=list(ssh_options.SIGNATURE_ALGS),  # the broker's login key
            mac_algs=list(ssh_options.MAC_ALGS),
            compression_algs=list(ssh_options.COMPRESSION_ALGS),
            encoding=None,  # bytes in, bytes out: no decoding, no line editor
            line_editor=False,
            allow_pty=True,  # each pty-req still needs a granted shell to mean anything
            agent_forwarding=False,
            x11_forwarding=False,
            sftp_factory=None,
            allow_scp=False,
            keepalive_interval=ssh_options.KEEPALIVE_INTERVAL,
            keepalive_count_max=ssh_options.KEEPALIVE_COUNT_MAX,
            login_timeout=LOGIN_TIMEOUT,
            window=ssh_options.CHANNEL_WINDOW,
            max_pktsize=ssh_options.CHANNEL_PACKET_SIZE,
        )

    async def connect_once(self) -> asyncssh.SSHServerConnection:
        """One connection by the first way that works: the one that worked last,
        then the enrolled broker's raw SSH port and HTTPS port (``wstunnel.py``),
        then the other broker nodes' (``peers.py``), each checked the same way.
        ``OSError`` naming what each way said when none does."""
        endpoints = self.nodes.endpoints(self._config)
        endpoints.sort(key=lambda endpoint: endpoint != self._preferred)
        failures = []
        for endpoint in endpoints:
            try:
                conn = await self._connect(endpoint)
            except REDIAL_ERRORS as exc:
                failures.append(f"{self._name(endpoint)}: {describe(exc)}")
                continue
            if failures:  # say once why the other ways did not work
                log.info(
                    "agent=%s reached the broker by %s (%s)",
                    self._config.agent_id,
                    self._name(endpoint),
                    "; ".join(failures),
                )
            self._preferred = endpoint
            return conn
        raise OSError("; ".join(failures))

    def _name(self, endpoint: Endpoint) -> str:
        """The route's name; another node's address too (the enrolled one goes unsaid)."""
        name = ROUTE_NAMES[endpoint.route]
        enrolled = (self._config.tunnel_host, self._config.tunnel_port, self._config.tunnel_url)
        if endpoint.route == "ssh" and (endpoint.host, endpoint.port) == enrolled[:2]:
            return name
        if endpoint.route == "https" and endpoint.url == enrolled[2]:
            return name
        return f"{name} of {endpoint}"

    async def _connect(self, endpoint: Endpoint) -> asyncssh.SSHServerConnection:
        config = self._config
        if endpoint.route == "ssh":
            proxy = proxy_for(endpoint.host, config.proxy)
            sock = await open_connection(endpoint.host, endpoint.port, proxy)
            return await self._ssh_on(sock)
        # websockets (and what it imports) loads only for a PC that needs the HTTPS port
        from allowhelp.agent.wstunnel import open_https_tunnel  # noqa: PLC0415

        sock, carrier = await open_https_tunnel(endpoint.url, config.ca_pem, config.proxy)
        try:
            conn = await self._ssh_on(sock)
        except BaseException:
            carrier.cancel()
            raise
        self._carriers.add(carrier)  # ends by itself when the tunnel closes
        carrier.add_done_callback(self._carriers.discard)
        return conn

    async def _ssh_on(self, sock: socket.socket) -> asyncssh.SSHServerConnection:
        try:
            conn = await asyncssh.connect_reverse(sock=sock, config=None, options=self._options())
        except BaseException:
            sock.close()
            raise
        send_one_packet_per_message(conn)  # no empty MSG_IGNORE before each packet
        return conn

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Connect, serve until the tunnel drops, wait a jittered while, repeat."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            returned, self._returned = self._returned, None
            up = 0.0  # how long a tunnel stood; a slow failed try (a stalling proxy) is none
            try:
                conn = returned or await self.connect_once()
            except REDIAL_ERRORS as exc:
                self.state.last_error = describe(exc)
                log.warning(
                    "agent=%s cannot reach the broker (%s)",
                    self._config.agent_id,
                    self.state.last_error,
                )
            else:
                connected = loop.time()
                await self._serve(conn, stop)
                up = loop.time() - connected
            if self._returned is not None:  # moved back to its first node: no wait
                continue
            if up > STABLE_AFTER:
                self.state.attempts = 0
            delay = backoff_delay(self.state.attempts, self._cap)
            self.state.attempts += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _serve(self, conn: asyncssh.SSHServerConnection, stop: asyncio.Event) -> None:
        self.state.connected = True
        log.info("agent=%s connected to the broker", self._config.agent_id)
        stopper = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(conn.wait_closed())
        mover = asyncio.create_task(self._move_back())
        await asyncio.wait({stopper, closed, mover}, return_when=asyncio.FIRST_COMPLETED)
        if mover.done() and _moved(mover) is None:  # nowhere to move back to
            await asyncio.wait({stopper, closed}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not mover.done():
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mover
        self._returned = _moved(mover)
        if self._returned is not None and stop.is_set():  # stopping: no tunnel kept
            self._returned.close()
            self._returned = None
        if not closed.done():
            conn.close()
            await closed
        if self._carriers:  # the WebSocket under it closes with it
            await asyncio.wait(set(self._carriers), timeout=5)
        self.state.connected = False
        log.info("agent=%s tunnel closed", self._config.agent_id)

    async def _move_back(self) -> asyncssh.SSHServerConnection | None:
        """On a node it failed over to (``peers.ahead_of``), with no session running
        or asked for: every calm, jittered while, dial the ways ahead of this one; the
        first that answers (checked as always) is the tunnel from then on, and the one
        it is on closes. None at once on the enrolled broker (nowhere to move back to)."""
        while ahead_of(self._preferred, self.nodes.endpoints(self._config), self._config):
            calm = self._cap * RETURN_EVERY
            await asyncio.sleep(random.uniform(calm / 2, calm * 3 / 2))
            if self._busy():
                continue
            for endpoint in ahead_of(
                self._preferred, self.nodes.endpoints(self._config), self._config
            ):
                try:
                    conn = await self._connect(endpoint)
                except REDIAL_ERRORS:
                    continue
                if self._busy():  # a session was asked for meanwhile: it runs here
                    conn.close()
                    break
                log.info(
                    "agent=%s moves back to %s: it is live again",
                    self._config.agent_id,
                    self._name(endpoint),
                )
                self._preferred = endpoint
                return conn
        return None

    def _busy(self) -> bool:
        gate = self._service.gate
        return bool(gate.grants() or gate.pending())


def _moved(
    mover: asyncio.Task[asyncssh.SSHServerConnection | None],
) -> asyncssh.SSHServerConnection | None:
    """The connection a finished ``_move_back`` made, if it made one."""
    if not mover.done() or mover.cancelled():
        return None
    failed = mover.exception()
    if failed is not None:
        log.warning("moving back to the first broker node failed: %s", describe(failed))
        return None
    return mover.result()


def describe(exc: BaseException) -> str:
    """One line about a failed connection; a proxy's password is never in it."""
    if isinstance(exc, asyncssh.PermissionDenied):
        return "the tunnel peer is not the pinned broker (key refused)"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"disconnected: {exc.reason}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
