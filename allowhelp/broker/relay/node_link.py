"""The technician's node relaying to the node that holds the agent's tunnel (#21, routing).

Several nodes share one database; an agent's tunnel is held by one of them
(``agent_nodes``). A technician logged in on node A who asks for a session on an
agent connected to node B is served by B, as if they were logged in there: A
passes the request (``POST /api/v1/sessions``, ``.../end``) and the session's
WebSocket (terminal, screen) to B's node listener, with the technician's own
cookie and CSRF header, and relays the bytes. B authenticates the technician
again from the shared store, asks the PC for consent, opens the channel on the
agent's tunnel, records and audits, exactly as for its own console
(``node/relay_listener.py``). The model is proxy peering: the node with the
agent's reverse tunnel dials the agent; the technician's node only relays.

Between nodes: TLS 1.3 with a certificate each side issued itself under the
shared CA naming its node id (``certs/nodecert.py``); this side checks that the
node it reached is the one it meant, the other side that the caller is a live
node. Nothing goes between nodes without both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AgentUnreachable, BrokerError, Forbidden
from allowhelp.broker.relay.node_http import NodeAnswer, send_to_node
from allowhelp.broker.store import Store
from allowhelp.broker.store.node_peers import AgentElsewhere, PeerNode, SessionPeer
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.certs.nodecert import node_id_in

log = logging.getLogger(__name__)

# Set in the ASGI scope of a request that came from another node: it is served
# here and never relayed again (no loops, one hop).
FROM_NODE = "allowhelp.from_node"
CONNECT_TIMEOUT = 10.0
MAX_FRAME = 1024 * 1024  # the console's own WebSocket limit (node/server.py)
# Relayed HTTP requests that are not audited as relayed: reads, which change nothing.
QUIET_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class NodeCredentials:
    """The shared CA, and this node's own certificate and key under it."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # the node id in the certificate is checked instead
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca))
        self.load_into(context)
        return context

    def load_into(self, context: ssl.SSLContext) -> None:
        """This node's certificate and key (again, once renewed) for new handshakes."""
        context.load_cert_chain(str(self.cert), str(self.key))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED  # no certificate from the CA: no handshake
        context.load_verify_locations(cafile=str(self.ca))
        self.load_into(context)
        return context


def _is_the_node(peercert: object, node: PeerNode) -> None:
    """The node reached must be the node meant, not any holder of a CA certificate."""
    found = node_id_in(peercert)
    if found != node.id:
        raise AgentUnreachable(
            f"the node at {node.address} is not node {node.id} (its certificate names "
            f"{found or 'no node'}): not relayed"
        )


def _connection_to(node: PeerNode, refused: list[AgentUnreachable]) -> type[ClientConnection]:
    """A WebSocket connection that checks the TLS peer is ``node`` as soon as TLS is up,
    before its upgrade request (which carries the technician's cookie) is written: a
    wrong peer is aborted unwritten and the reason put in ``refused``."""

    class NodeConnection(ClientConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            try:
                _is_the_node(transport.get_extra_info("peercert"), node)
            except AgentUnreachable as exc:
                refused.append(exc)
                cast("asyncio.Transport", transport).abort()  # nothing written to it

    return NodeConnection


def _connect_failed(exc: Exception, node: PeerNode) -> BrokerError | None:
    """What a failed connect to ``node`` becomes (the page sees what a local refusal
    shows); None: not a failure of the connect (raised as it is)."""
    if isinstance(exc, InvalidStatus):
        if exc.response.status_code == 403:
            return Forbidden("not your session, or it is over")
        return AgentUnreachable(f"the node holding the machine refused: {exc}")
    if isinstance(exc, (OSError, InvalidHandshake, TimeoutError)):
        return AgentUnreachable(
            f"the node holding the machine ({node.address}) cannot be reached: {exc}"
        )
    return None


class NodeRoute:
    """Finds the node that holds an agent or a session, and relays to it."""

    def __init__(self, db: StoreWorker, audit: AuditLog, credentials: NodeCredentials) -> None:
        self._db = db
        self._audit = audit
        self._credentials = credentials
        self._context = credentials.client_context()

    def reload_certificate(self) -> None:
        self._credentials.load_into(self._context)

    @property
    def node_id(self) -> str:
        return self._db.node_id

    async def agent_node(self, agent_id: str) -> PeerNode | None:
        return await self._db.read(Store.agent_peer, agent_id)

    async def session_node(self, session_id: str) -> SessionPeer | None:
        return await self._db.read(Store.session_peer, session_id)

    async def session_ran_by(self, session_id: str) -> PeerNode | None:
        return await self._db.read(Store.session_ran_by, session_id)

    async def session_peers(self) -> list[PeerNode]:
        return await self._db.read(Store.session_peers)

    async def agents_elsewhere(self) -> dict[str, AgentElsewhere]:
        return await self._db.read(Store.agents_elsewhere_live)

    async def forward(
        self,
        node: PeerNode,
        method: str,
        target: str,
        headers: dict[str, str],
        body: AsyncIterator[bytes],
        *,
        actor: str,
        about: dict[str, str],
    ) -> NodeAnswer:
        """One HTTP request to ``node``'s listener, streamed; its answer as it comes.

        A request that changes something (any method but GET, HEAD, OPTIONS) is audited
        first (``request.relayed``; ``about``: the session or agent it is for); a read is
        not: it changes nothing, and the console's pages poll (chat, file listings)."""
        if method not in QUIET_METHODS:
            await self._audit.write(
                "request.relayed",
                actor=actor,
                target=next(iter(about.values()), ""),
                details={
                    **about,
                    "method": method,
                    "path": target.partition("?")[0],  # a query may name what is not ours
                    "from_node": self.node_id,
                    "to_node": node.id,
                },
            )
        return await send_to_node(
            node,
            self._context,
            _is_the_node,
            method=method,
            target=target,
            headers=headers,
            body=body,
        )

    async def relay(
        self,
        websocket: WebSocket,
        node: PeerNode,
        target: str,
        *,
        actor: str,
        session: dict[str, object],
        cookie: str,
    ) -> None:
        """The technician's WebSocket ↔ the same WebSocket (``target``: its path and
        query) on ``node``, until either ends; ``cookie``: the one cookie sent there.

        Audited first (``session.relayed``); refused as ``node`` refuses it (before
        accepting: the page sees what a local refusal shows); a node that goes away
        mid-session is audited (``session.relay_lost``) and the page is closed at once.
        """
        where = {**session, "from_node": self.node_id, "to_node": node.id}
        await self._audit.write(
            "session.relayed",
            actor=actor,
            target=str(session.get("session", "")),
            details=where,
        )
        offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols") or []]
        headers = Headers(cookie=cookie) if cookie else Headers()
        refused: list[AgentUnreachable] = []
        try:
            peer = await connect(
                f"wss://{node.address}{target}",
                create_connection=_connection_to(node, refused),
                ssl=self._context,
                origin=Origin(node.https),
                additional_headers=headers,
                subprotocols=offered or None,
                open_timeout=CONNECT_TIMEOUT,
                max_size=MAX_FRAME,
                compression=None,
            )
        except Exception as exc:
            if refused:  # not the node meant: the cookie never left
                raise refused[0] from exc
            failure = _connect_failed(exc, node)
            if failure is None:
                raise
            raise failure from exc
        try:
            await websocket.accept(subprotocol=peer.subprotocol)
            await self._pump(websocket, peer, node, actor, where)
        finally:
            await peer.close()

    async def _pump(
        self,
        websocket: WebSocket,
        peer: ClientConnection,
        node: PeerNode,
        actor: str,
        where: dict[str, object],
    ) -> None:
        up = asyncio.ensure_future(_browser_to_node(websocket, peer))
        down = asyncio.ensure_future(_node_to_browser(peer, websocket))
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for failed in await asyncio.gather(up, down, return_exceptions=True):
            if isinstance(failed, Exception) and not isinstance(failed, ConnectionClosed):
                log.info("session=%s relay: %s", where.get("session"), failed)
        received = peer.protocol.close_rcvd
        if received is not None:  # the other node ended it and said how
            await _close(websocket, received.code, received.reason)
            return
        if up in done or peer.state is not State.CLOSED:
            return  # the technician left: the other node ends the session (technician)
        message = f"the node holding this machine ({node.id[:8]}) went away: the session ends"
        log.warning("session=%s: %s", where.get("session"), message)
        with contextlib.suppress(BrokerError):  # said to the page whatever the log can take
            await self._audit.write(
                "session.relay_lost",
                actor="system",
                target=str(where.get("session", "")),
                details={**where, "by": actor, "error": message},
            )
        await _close(websocket, 1011, message)


async def _browser_to_node(websocket: WebSocket, peer: ClientConnection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is not None:
            await peer.send(data)
        elif (text := message.get("text")) is not None:
            await peer.send(text)


async def _node_to_browser(peer: ClientConnection, websocket: WebSocket) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for frame in peer:
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # the page may have gone already
        await websocket.close(code, reason[:120])
