"""The tunnel listener: agents dial in, and the broker plays SSH *client* on top.

Each accepted TCP connection runs the client side of SSH, all of them sharing
one prepared options object (``_start_client``). The agent's host key is its
identity: it is checked against the enrolled keys before the handshake
completes, so no agent can claim another's id, and a removed agent is refused
like an unknown one. The keys are kept in memory (``tunnel/keys.py``), so the
handshake never waits for the database.

Admission control, as OpenSSH's MaxStartups (``tunnel/admission.py``):
a bounded number of handshakes at once, the next connections waiting in order
for a slot, the rest left in the kernel's backlog, so a whole fleet
reconnecting after a broker restart gets back in. Audit and
store writes run off the event loop, so a slow disk or a locked database does
not stall every tunnel.

What of connects, disconnects and refusals is audited, and what only goes to
the connectivity history, is ``audit/connectivity.py``: a flapping agent or a
flood of failed handshakes must not drown the chain. A failed handshake is
logged at WARNING with the peer address (the first per address per window;
the rest at DEBUG, and summed up in the audit log).

The SSH client options shared by every tunnel, and what each keeps small:
``tunnel/sshclient.py``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Literal

import asyncssh

from allowhelp.broker.audit.connectivity import ConnectivityAudit
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.options import DEFAULT_BURST, DEFAULT_WINDOW
from allowhelp.broker.errors import TunnelError
from allowhelp.broker.listen import bind
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.admission import TUNNEL_BACKLOG, Admission
from allowhelp.broker.tunnel.agents import ONLINE, AgentRegistry
from allowhelp.broker.tunnel.batch import StoreBatch
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.broker.tunnel.link import AgentLink, Dispatcher
from allowhelp.broker.tunnel.sshclient import SharedSigAlgs, client_options, start_client
from allowhelp.certs.sshkeys import agent_id_for, load_private_key, public_key_line

log = logging.getLogger(__name__)


class StoredHistory:
    """The connectivity history table, as ``audit/connectivity.py`` writes it:
    on the store's writer thread, never on the event loop."""

    def __init__(self, db: StoreWorker) -> None:
        self._db = db
        self._rows = StoreBatch(db)  # one writer-thread call for many rows (tunnel/batch.py)

    async def record_connectivity(
        self,
        agent_id: str,
        event: Literal["connected", "disconnected"],
        remote: str,
        reason: str,
        when: float,
    ) -> None:
        await self._rows.run(Store.record_connectivity, agent_id, event, remote, reason, when)

    async def prune_connectivity(self, now: float) -> int:
        return await self._db.run(Store.prune_connectivity, now)


class AgentConnection(asyncssh.SSHClient):
    """Per-tunnel callbacks; one instance per accepted connection."""

    def __init__(self, listener: TunnelListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHClientConnection | None = None
        self.link: AgentLink | None = None
        self.peer = "?"
        self.refused = False  # its key was refused: audited as agent.refused, not tunnel.refused

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        accepted = self._listener.accept_key(key, addr, self.peer)
        self.refused = not accepted
        return accepted

    def begin_auth(self, username: str) -> None:
        # Straight to publickey, the one method an agent takes: not asyncssh's
        # opening "none" probe, a round trip and two packets per end per handshake.
        if self._conn is not None and getattr(self._conn, "_auth_methods", None) == [b"none"]:
            self._conn._auth_methods = [b"publickey"]  # private, asyncssh 2.24.1

    def auth_completed(self) -> None:
        if self._conn is not None:
            self._listener.share_sig_algs(self._conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self._listener.lost(self.link, exc, self.peer)


class TunnelListener:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        registry: AgentRegistry,
        tunnel_key: Path,
        dispatcher: Dispatcher,
        *,
        keys: EnrolledKeys,
        window: float = DEFAULT_WINDOW,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self._dispatcher = dispatcher
        self._audit = audit
        self._registry = registry
        self._keys = keys
        self._key = load_private_key(tunnel_key)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._admission = Admission()
        self.dropped = 0
        self.waited_too_long = 0
        # Handshakes that ended, by outcome (a refused key is a failure): metrics.
        self.handshakes_succeeded = 0
        self.handshakes_failed = 0
        self._options_built: asyncssh.SSHClientConnectionOptions | None = None
        self._stopping = False
        self._sig_algs = SharedSigAlgs()
        self._connectivity = ConnectivityAudit(
            audit,
            StoredHistory(db),
            window=window,
            burst=burst,
            online=lambda a: registry.get(a) is not None,
        )

    @property
    def connectivity(self) -> ConnectivityAudit:
        """Connects, disconnects and refusals on the record; the doorbell's too."""
        return self._connectivity

    async def start(self, host: str | None, port: int) -> int | None:
        """Listen and return the bound port (useful when port 0 was asked); with
        no host, take only the tunnels handed over by ``accept_stream``."""
        if host is not None:
            try:
                self._sock = bind(host, port, backlog=TUNNEL_BACKLOG)
            except ValueError as exc:
                raise TunnelError(f"cannot listen for agents: {exc}") from exc
        self._options_built = self._options()
        self._connectivity.start()
        if self._sock is None:
            return None
        self._accepting = asyncio.create_task(self._accept_loop(self._sock))
        return int(self._sock.getsockname()[1])

    def accept_stream(self, sock: socket.socket, address: str, peer: str) -> None:
        """A tunnel that came another way (a WebSocket on the HTTPS port, bridged
        to ``sock``): the same admission, handshake, key check and audit."""
        if self._options_built is None or self._stopping:
            sock.close()
            return
        self._spawn(self._admit_stream(sock, address, peer))

    async def _admit_stream(self, sock: socket.socket, address: str, peer: str) -> None:
        # Already accepted by the console: no backlog to leave it in. A full waiting
        # room drops it at once (its agent retries) rather than holding it uncounted.
        if not self._admission.room.is_set() or not self._admission.admit(address):
            self.dropped += 1
            sock.close()
            return
        await self._handshake(sock, address, peer)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        warned = 0.0
        while True:
            await self._admission.room.wait()
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: wait, do not spin or flood the log
                if loop.time() - warned > 10:
                    log.error("cannot accept agent connections: %s", exc.strerror or exc)
                    warned = loop.time()
                await asyncio.sleep(0.1)
                continue
            address = str(peer[0])
            if not self._admission.admit(address):
                self.dropped += 1
                sock.close()
                continue
            self._spawn(self._handshake(sock, address, f"{address}:{peer[1]}"))

    async def _handshake(self, sock: socket.socket, address: str, peer: str) -> None:
        """Wait for a handshake slot, then run the SSH client on an accepted socket;
        the admission is held until the handshake ends, in success or failure
        (login timeout included: asyncssh arms ``options.login_timeout`` when it
        builds the connection)."""
        try:
            await self._admission.slot()
        except TimeoutError as exc:  # closed unanswered, on the record as a refused handshake
            self.waited_too_long += 1
            self._handshake_failed(address, peer, exc)
            self._admission.done(address)
            sock.close()
            return
        except asyncio.CancelledError:
            self._admission.done(address)
            sock.close()
            raise
        try:
            if self._stopping:
                sock.close()
                self._admission.done(address)
                return
            conn = await self._run_handshake(sock, address, peer)
        finally:
            self._admission.release()
        if conn is not None:
            await self._accepted(conn)

    async def _run_handshake(
        self, sock: socket.socket, address: str, peer: str
    ) -> asyncssh.SSHClientConnection | None:
        """The SSH handshake; the connection once authenticated, None if it failed."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        conn: asyncssh.SSHClientConnection | None = None
        try:
            _, conn = await loop.create_connection(
                lambda: self._start_client(loop, finished, address), sock=sock
            )
            await finished
        except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
            # ValueError: asyncssh's PacketDecodeError, a peer's malformed packet.
            self._handshake_lost(conn, address, peer, exc)
            if conn is None:
                sock.close()
            else:
                conn.abort()
            return None
        except asyncio.CancelledError:
            if conn is not None:
                conn.abort()
            else:
                sock.close()
            raise
        finally:
            self._admission.done(address)
        self.handshakes_succeeded += 1
        return conn

    def _handshake_lost(
        self,
        conn: asyncssh.SSHClientConnection | None,
        address: str,
        peer: str,
        exc: BaseException,
    ) -> None:
        """Count a failed handshake, and record it unless its key was refused (that
        refusal is on the record already: ``accept_key``)."""
        self.handshakes_failed += 1
        owner = conn.get_owner() if conn is not None else None
        if not (isinstance(owner, AgentConnection) and owner.refused):
            self._handshake_failed(address, peer, exc)

    def _handshake_failed(self, address: str, peer: str, exc: BaseException) -> None:
        reason = (str(exc) or type(exc).__name__)[:200]
        first = self._connectivity.handshake_failed(address, peer, reason)
        # The first per address per window at WARNING; a flood stays readable.
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "tunnel handshake failed: %s (from %s)", reason, peer)

    def _start_client(
        self, loop: asyncio.AbstractEventLoop, finished: asyncio.Future[None], address: str
    ) -> asyncssh.SSHClientConnection:
        return start_client(loop, self._shared_options(), finished, address)

    def _shared_options(self) -> asyncssh.SSHClientConnectionOptions:
        if self._options_built is None:
            raise TunnelError("the tunnel listener is not started")
        return self._options_built

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _options(self) -> asyncssh.SSHClientConnectionOptions:
        return client_options(self._key, lambda: AgentConnection(self))

    def share_sig_algs(self, conn: asyncssh.SSHClientConnection) -> None:
        """The peer's ``server-sig-algs`` set swapped for a shared one (memory per tunnel)."""
        self._sig_algs.share(conn)

    def accept_key(self, key: asyncssh.SSHKey, addr: str, peer: str) -> bool:
        agent_id = agent_id_for(key)
        status = self._keys.status(agent_id, public_key_line(key))  # in memory: tunnel/keys.py
        if status == "enrolled":
            return True
        reason = "removed" if status == "removed" else "unknown key"
        # Refusing needs no permission, so the record may follow the refusal.
        first = self._connectivity.refused_key(agent_id, addr, peer, reason)
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "refused agent key %s from %s: %s", agent_id, peer, reason)
        return False

    async def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        key = conn.get_server_host_key()
        owner = conn.get_owner()
        if key is None or not isinstance(owner, AgentConnection):
            conn.close()
            return
        agent_id = agent_id_for(key)
        # A connect is on the record once per offline → online (tunnel/agents.py
        # arrive): not for an agent online already (its doorbell, an older tunnel).
        admission = await self._registry.arrive(
            agent_id, lambda: self._connectivity.connected(agent_id, owner.peer)
        )
        if admission == "refused":
            conn.close()
            return
        # gone while the record was written, or removed meanwhile: nothing to attach
        gone = "removed" if self._keys.is_removed(agent_id) else ""
        if gone or conn.is_closed():
            conn.close()
            if admission != ONLINE:
                why = gone or "closed before it was online"
                self._connectivity.disconnected(agent_id, owner.peer, why)
            return
        live = self._registry.get(agent_id)
        if admission == ONLINE and live is not None and live.awake:  # an older tunnel goes
            self._connectivity.replaced(agent_id, owner.peer)
        owner.link = link = AgentLink(agent_id, conn, self._dispatcher)
        self._registry.attach(agent_id, link, owner.peer)
        self._spawn(link.open())
        level = logging.INFO if admission == "chained" else logging.DEBUG
        log.log(level, "agent=%s connected from %s (%s)", agent_id, owner.peer, admission)

    def lost(self, link: AgentLink, exc: Exception | None, peer: str) -> None:
        agent_id = link.agent_id
        if not self._registry.detach(agent_id, link):
            return
        if self._registry.online(agent_id):  # its doorbell stands: not offline
            log.debug("agent=%s tunnel closed; its doorbell stands", agent_id)
            return
        reason = str(exc) if exc else "closed"
        # The tunnel is already gone: nothing to refuse, the record follows.
        chained = self._connectivity.disconnected(agent_id, peer, reason)
        level = logging.INFO if chained else logging.DEBUG
        log.log(level, "agent=%s disconnected (%s)", agent_id, reason)

    async def stop(self) -> None:
        """Stop accepting, drop every tunnel, and let pending audit records land."""
        self._stopping = True  # tunnels still arriving over HTTPS are closed
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._admission.cancel_waiting()  # accepted, not started: just closed
        self._registry.close_all()
        await asyncio.sleep(0)  # connection_lost callbacks queue their records
        await self._connectivity.stop()  # pending summaries and tallies land too
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
