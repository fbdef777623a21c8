"""The tunnel listener: agents dial in, and the broker plays SSH *client* on top.

``asyncssh.listen_reverse`` accepts the TCP connection and runs the client
side of SSH over it. The agent's host key is its identity: it is checked
against the enrolled keys before the handshake completes, so no agent can
claim another's id, and a removed agent is refused like an unknown one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncssh

from allowhelp.certs import ssh_options
from allowhelp.certs.sshkeys import agent_id_for, load_private_key, public_key_line

from .agentlink import AgentLink, Dispatcher
from .audit import AuditLog
from .errors import AuditUnavailable, TunnelError
from .registry import AgentRegistry
from .store import Store

log = logging.getLogger(__name__)


class AgentConnection(asyncssh.SSHClient):
    """Per-tunnel callbacks; one instance per accepted connection."""

    def __init__(self, listener: TunnelListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHClientConnection | None = None
        self.link: AgentLink | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._listener.accept_key(key, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self._listener.lost(self.link, exc)


class TunnelListener:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        registry: AgentRegistry,
        tunnel_key: Path,
        dispatcher: Dispatcher,
    ) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._audit = audit
        self._registry = registry
        self._key = load_private_key(tunnel_key)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen and return the bound port (useful when port 0 was asked)."""
        try:
            self._acceptor = await asyncssh.listen_reverse(
                host,
                port,
                client_factory=lambda: AgentConnection(self),
                acceptor=self._accepted,
                error_handler=self._failed,
                config=None,
                options=self._options(),
                backlog=1024,
            )
        except (OSError, asyncssh.Error) as exc:
            raise TunnelError(f"cannot listen for agents on {host}:{port}: {exc}") from exc
        return self._acceptor.get_port()

    def _options(self) -> asyncssh.SSHClientConnectionOptions:
        return asyncssh.SSHClientConnectionOptions(
            username=ssh_options.BROKER_USERNAME,
            client_keys=[self._key],
            agent_path=None,
            known_hosts=([], [], []),  # empty, not None: every key goes to accept_key
            x509_trusted_certs=None,
            server_host_key_algs=list(ssh_options.HOST_KEY_ALGS),
            encryption_algs=list(ssh_options.ENCRYPTION_ALGS),
            kex_algs=list(ssh_options.KEX_ALGS),
            mac_algs=list(ssh_options.MAC_ALGS),
            compression_algs=list(ssh_options.COMPRESSION_ALGS),
            preferred_auth=["publickey"],
            keepalive_interval=ssh_options.KEEPALIVE_INTERVAL,
            keepalive_count_max=ssh_options.KEEPALIVE_COUNT_MAX,
            login_timeout=30,
        )

    def accept_key(self, key: asyncssh.SSHKey, addr: str) -> bool:
        line = public_key_line(key)
        record = self._store.agent_by_key(line)
        if record is not None and not record.removed:
            return True
        reason = "removed" if record is not None else "unknown key"
        try:
            self._audit.append(
                "agent.refused",
                actor="system",
                target=agent_id_for(key),
                details={"reason": reason, "remote": addr},
            )
        except AuditUnavailable:
            log.error("could not audit a refused agent key from %s", addr)
        log.warning("refused agent key from %s: %s", addr, reason)
        return False

    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        key = conn.get_server_host_key()
        owner = conn.get_owner()
        if key is None or not isinstance(owner, AgentConnection):
            conn.close()
            return
        agent_id = agent_id_for(key)
        try:
            self._audit.append(
                "agent.connected",
                actor=f"agent:{agent_id}",
                target=agent_id,
                details={"remote": owner.peer},
            )
        except AuditUnavailable:
            log.error("agent=%s refused: its connection could not be audited", agent_id)
            conn.close()
            return
        owner.link = link = AgentLink(agent_id, conn, self._dispatcher)
        self._store.touch_agent(agent_id, time.time())
        self._registry.attach(agent_id, link, owner.peer)
        self._tasks.add(task := asyncio.create_task(link.open()))
        task.add_done_callback(self._tasks.discard)
        log.info("agent=%s connected from %s", agent_id, owner.peer)

    def _failed(self, conn: asyncssh.SSHClientConnection, exc: Exception) -> None:
        log.info("tunnel handshake failed: %s", exc)

    def lost(self, link: AgentLink, exc: Exception | None) -> None:
        agent_id = link.agent_id
        if not self._registry.detach(agent_id, link):
            return
        try:
            self._store.touch_agent(agent_id, time.time())
            self._audit.append(
                "agent.disconnected",
                actor=f"agent:{agent_id}",
                target=agent_id,
                details={"reason": str(exc) if exc else "closed"},
            )
        except Exception:
            # The tunnel is already gone; nothing to refuse, but say it loudly.
            log.exception("agent=%s disconnect could not be recorded", agent_id)
        log.info("agent=%s disconnected (%s)", agent_id, exc or "closed")

    async def stop(self) -> None:
        self._registry.close_all()
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
