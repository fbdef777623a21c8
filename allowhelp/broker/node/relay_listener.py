"""The node listener: where the other nodes hand this node their technicians'
sessions on the agents whose tunnel it holds (#21, routing; docs/multinode.md).

``serve --node-listen HOST:PORT`` (with ``--store``). At start the node issues
itself a certificate under the shared CA naming its node id
(``certs/nodecert.py``), listens with TLS 1.3 requiring a client certificate
from that CA, and writes its address in ``node_peers``. Every connection is then
checked before a byte of it is read: the certificate must name a node that is a
live row of ``broker_nodes`` (a console certificate, or anything else the CA
signed, names none); otherwise it is closed and ``node.peer_refused`` audited.

What a node may ask is the console's own API, narrowed to the relayed routes (a
session asked; a running one's page, end, notes, files, chat, invitations, terminal
and screen; the caller's invitations on this node, for a session list), served by
this node's console app with the technician's own cookie and CSRF header: the
login, the technician's rights (or an invitee's allowed invitation), the consent
gate, the one attach path, the recording and the audit are exactly those of a
local technician. Nothing is relayed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.utils import get_remote_addr

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.console.httpguard import GuardedHttpProtocol
from allowhelp.broker.errors import BrokerError
from allowhelp.broker.listen import bind
from allowhelp.broker.node.live_agents import LiveAgentsShared
from allowhelp.broker.relay.node_link import FROM_NODE, NodeCredentials, NodeRoute
from allowhelp.broker.settings import NodeRelay, format_hostport
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.certs.nodecert import issue_node_certificate, node_id_in

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NODE_CERT, NODE_KEY = "node-relay.pem", "node-relay.key"  # this node's own, made each start
RENEW_EVERY = 86400.0  # a new certificate each day: one node may run for months
_SESSION = r"/api/v1/sessions/[A-Za-z0-9_-]{8,64}"
# What another node may ask: the relayed routes, nothing else of the console.
RELAYED = {
    "http": re.compile(
        rf"POST (/api/v1/sessions|{_SESSION}/(end|messages|invite))|PATCH {_SESSION}"
        # the caller's invitee views (a list asked by a node), and one session's page
        rf"|GET (/api/v1/sessions|{_SESSION})"
        rf"|GET {_SESSION}/(files|files/content|messages|invites)|PUT {_SESSION}/files/content"
        rf"|DELETE {_SESSION}/invite/[^/]{{1,64}}"
    ),
    "websocket": re.compile(rf"GET {_SESSION}/(terminal|screen)"),
}


class PeerGate:
    """Checks each connection's certificate against the live nodes, and each
    request against the relayed routes."""

    def __init__(self, db: StoreWorker, audit: AuditLog, app: ASGIApp) -> None:
        self._db = db
        self._audit = audit
        self._app = app
        self._nodes: dict[tuple[str, int], str] = {}  # checked connections → their node
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self, transport: asyncio.Transport) -> None:
        """A new connection, its TLS handshake done: nothing of it is read until its
        certificate names a live node."""
        address = get_remote_addr(transport)
        if address is not None:
            self._nodes.pop(address, None)
        transport.pause_reading()
        task = asyncio.ensure_future(self._check(transport, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, transport: asyncio.Transport, address: tuple[str, int] | None) -> None:
        claimed = node_id_in(transport.get_extra_info("peercert"))
        problem = "its certificate names no broker node"
        if claimed is not None:
            try:
                live = await self._db.read(Store.node_is_live, claimed)
            except BrokerError as exc:
                live, problem = False, f"the store cannot say: {exc}"
            else:
                problem = f"node {claimed} is not a live broker node"
            if live and address is not None and not transport.is_closing():
                self._nodes[address] = claimed
                transport.resume_reading()
                return
        remote = format_hostport(*address) if address else "?"
        log.warning("node listener: refused %s: %s", remote, problem)
        transport.close()
        try:
            await self._audit.write(
                "node.peer_refused",
                actor="system",
                details={"remote": remote, "node": claimed or "", "problem": problem},
            )
        except BrokerError as exc:  # refused all the same
            log.error("node listener: the refusal of %s is not on the record: %s", remote, exc)

    def forget(self, transport: asyncio.Transport) -> None:
        address = get_remote_addr(transport)
        if address is not None:
            self._nodes.pop(address, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        client = scope.get("client")
        node = self._nodes.get((str(client[0]), int(client[1]))) if client else None
        rule = RELAYED.get(str(kind))
        asked = f"{scope.get('method', 'GET')} {scope.get('path', '')}"
        if node is None or rule is None or rule.fullmatch(asked) is None:
            await _refuse(kind, receive, send)
            return
        await self._app({**scope, FROM_NODE: node}, receive, send)


async def _refuse(kind: object, receive: Receive, send: Send) -> None:
    if kind == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
        return
    if kind == "http":
        body = b'{"error": "not_relayed", "message": "not a route between nodes"}'
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _NodeProtocol(GuardedHttpProtocol):
    gate: ClassVar[PeerGate]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.gate.admit(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.gate.forget(self.transport)
        super().connection_lost(exc)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the broker stops it itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class NodeRelayListener:
    """This node's listener for the other nodes, and its route to them."""

    def __init__(self, config: NodeRelay, data_dir: Path, db: StoreWorker, audit: AuditLog):
        self._config = config
        self._db = db
        self._audit = audit
        self.credentials = NodeCredentials(
            data_dir / "ca.pem", data_dir / NODE_CERT, data_dir / NODE_KEY
        )
        self._ca_key = data_dir / "ca.key"
        self._issue()
        self.route = NodeRoute(db, audit, self.credentials)
        self._context = self.credentials.server_context()
        self._renewal: asyncio.Task[None] | None = None
        self._shared: LiveAgentsShared | None = None
        self._sock: socket.socket | None = bind(config.host, config.port)
        self._server: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self.address = format_hostport(config.address, self._sock.getsockname()[1])

    async def start(self, app: ASGIApp) -> str:
        """Serve ``app`` (the console's) to live nodes; say where in ``node_peers``."""
        if self._sock is None:
            raise RuntimeError("the node listener was stopped")
        gate = PeerGate(self._db, self._audit, app)
        protocol = type("NodeProtocol", (_NodeProtocol,), {"gate": gate})
        context = self._context
        config = uvicorn.Config(
            gate,
            ssl_certfile=str(self.credentials.cert),  # uvicorn needs a file to speak TLS
            ssl_keyfile=str(self.credentials.key),
            ssl_context_factory=lambda _config, _default: context,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            http=protocol,
            ws_max_size=1024 * 1024,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = _Uvicorn(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        for _ in range(1000):
            if self._server.started:
                break
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("the node listener stopped during start-up")
            await asyncio.sleep(0.01)
        await self._db.run(Store.node_peer_set, self._db.node_id, self.address)
        self._renewal = asyncio.create_task(self._renew())
        log.info("node listener at %s (mutual TLS, live nodes only)", self.address)
        return self.address

    def _issue(self) -> None:
        issue_node_certificate(
            self.credentials.ca, self._ca_key, self._db.node_id, self.credentials.cert,
            self.credentials.key,
        )  # fmt: skip

    async def _renew(self) -> None:
        """A fresh certificate for new connections, long before the last one expires
        (``certs/nodecert.py``: 30 days); connections already open keep theirs."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await asyncio.to_thread(self._issue)
            except (OSError, ValueError) as exc:  # the old one serves on; said every day
                log.error("node listener: this node's certificate was not renewed: %s", exc)
                continue
            self.credentials.load_into(self._context)
            self.route.reload_certificate()
            log.info("node listener: this node's certificate renewed")

    def share_agents(self, agents: AgentRegistry) -> None:
        """Write the live details of the agents connected here for the other nodes'
        lists (``node/live_agents.py``), until stopped."""
        if self._shared is None:
            self._shared = LiveAgentsShared(self._db, agents)

    async def stop(self) -> None:
        if self._shared is not None:
            await self._shared.stop()
            self._shared = None
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
            self._renewal = None
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            try:
                await self._serving
            except Exception:  # stopping: say it, and go on closing the rest
                log.exception("the node listener failed")
            self._server = None
        try:
            await self._db.run(Store.node_peer_gone, self._db.node_id)
        except BrokerError as exc:
            log.warning("node listener: its address stays listed: %s", exc)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def start_node_relay(
    config: NodeRelay | None, data_dir: Path, db: StoreWorker, audit: AuditLog, app: ASGIApp
) -> NodeRelayListener | None:
    """``--node-listen``: this node's listener, serving ``app`` to live nodes; or None."""
    if config is None:
        return None
    listener = NodeRelayListener(config, data_dir, db, audit)
    try:
        await listener.start(app)
    except BaseException:
        await listener.stop()
        raise
    return listener
