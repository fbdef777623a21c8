"""The reverse-SSH tunnel between real agent and broker processes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import asyncssh
import pytest

from allowhelp.certs import ssh_options
from harness import ADMIN, ADMIN_PW, Agent, Broker, Fleet, online, wait_for
from netkit import CuttableProxy, dial_only, port_of


def enrolled(fleet: Fleet) -> tuple[Broker, Agent]:
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    agent = fleet.agent()
    assert agent.enroll(broker.token()).returncode == 0
    return broker, agent


def test_broker_kill_and_restart(fleet: Fleet) -> None:
    broker, agent = enrolled(fleet)
    agent.start("--reconnect-cap", "2")
    wait_for(lambda: online(broker, agent.agent_id), 20, "first connection")
    broker.kill()
    broker.start()
    wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to come back unaided")
    assert agent.proc is not None and agent.proc.poll() is None


def test_sigterm_stops_cleanly(fleet: Fleet) -> None:
    broker, agent = enrolled(fleet)
    agent.start()
    wait_for(lambda: online(broker, agent.agent_id), 20, "connection")
    assert broker.stop() == 0
    types = broker.audit_types()
    assert types[-1] == "broker.stopped"
    assert "agent.disconnected" in types


def test_unknown_agent_key_is_refused(fleet: Fleet) -> None:
    broker, _ = enrolled(fleet)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    host, port = "127.0.0.1", port_of(broker.tunnel)

    async def attempt() -> None:
        options = asyncssh.SSHServerConnectionOptions(server_host_keys=[stranger])
        conn = await asyncssh.connect_reverse(host, port, config=None, options=options)
        conn.close()

    with pytest.raises((asyncssh.Error, OSError)):
        asyncio.run(asyncio.wait_for(attempt(), 20))
    wait_for(lambda: "agent.refused" in broker.audit_types(), 10, "the refusal in the audit log")
    assert broker.agents(ADMIN, ADMIN_PW)[0]["online"] is False


class ImpostorListener:
    """A tunnel listener on the real port with a key that is not the pinned one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures: list[str] = []
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ImpostorListener:
        self._thread.start()
        key = asyncssh.generate_private_key("ssh-ed25519")
        options = asyncssh.SSHClientConnectionOptions(
            username=ssh_options.BROKER_USERNAME,
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
        )

        def accepted(conn: asyncssh.SSHClientConnection) -> None:
            self.accepted += 1

        def failed(conn: asyncssh.SSHClientConnection, exc: Exception) -> None:
            self.failures.append(type(exc).__name__)

        async def listen() -> asyncssh.SSHAcceptor:
            return await asyncssh.listen_reverse(
                "127.0.0.1",
                self.port,
                options=options,
                config=None,
                acceptor=accepted,
                error_handler=failed,
            )

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_impostor_tunnel_is_refused_and_agent_keeps_trying(fleet: Fleet) -> None:
    broker, agent = enrolled(fleet)
    broker.stop()
    with ImpostorListener(port_of(broker.tunnel)) as impostor:
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: len(impostor.failures) >= 2, 30, "the agent to refuse the impostor twice")
        assert impostor.accepted == 0
    assert "not the pinned broker" in agent.log.read_text()
    broker.start()
    wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to reach the real broker")


@contextlib.contextmanager
def through_proxy(broker: Broker, agent: Agent) -> Iterator[CuttableProxy]:
    """The agent dials the broker through a proxy the test can cut; yields once online."""
    proxy = CuttableProxy(port_of(broker.tunnel))
    proxy.restore()
    dial_only(proxy, agent.config)
    try:
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: online(broker, agent.agent_id), 20, "connection through the proxy")
        yield proxy
    finally:
        proxy.close()


def test_network_cut_and_restore(fleet: Fleet) -> None:
    broker, agent = enrolled(fleet)
    with through_proxy(broker, agent) as proxy:
        proxy.cut()
        wait_for(lambda: not online(broker, agent.agent_id), 20, "the broker to see the cut")
        proxy.restore()
        wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to come back")


def test_a_silent_dead_peer_is_noticed_by_keepalives(fleet: Fleet) -> None:
    """No FIN, no RST, nothing: only the SSH keepalives can tell, within 60 s on
    both ends (the agent's every 15 s; the broker's only after 20 s of silence)."""
    broker, agent = enrolled(fleet)
    with through_proxy(broker, agent) as proxy:
        proxy.black_hole = True
        wait_for(lambda: not online(broker, agent.agent_id), 65, "the broker to notice", step=1)
        wait_for(
            lambda: "tunnel closed" in agent.log.read_text(), 65, "the agent to notice", step=1
        )
        proxy.black_hole = False
        wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to come back")


def test_a_silent_connection_is_dropped_at_the_login_timeout(fleet: Fleet) -> None:
    """The broker builds its SSH connections itself (one shared options object):
    the login timeout must still end a handshake that never happens."""
    from allowhelp.broker.tunnel.sshclient import LOGIN_TIMEOUT

    broker, _ = enrolled(fleet)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(broker.tunnel))) as silent:
        silent.settimeout(LOGIN_TIMEOUT + 10)
        while silent.recv(4096):
            pass
    took = time.monotonic() - started
    assert LOGIN_TIMEOUT - 1 <= took <= LOGIN_TIMEOUT + 5
    wait_for(
        lambda: "handshake failed: Login timeout expired" in broker.log.read_text(),
        5,
        "the failed handshake to end (and give back its slot)",
    )


def test_silent_connections_cannot_lock_agents_out_for_long(fleet: Fleet) -> None:
    """Connections that never speak SSH hold handshake slots only until the
    login timeout. One address cannot take more than its share (its excess is
    closed at accept); over the global limit, newcomers wait in the backlog
    and get in as soon as there is room. The broker stays up throughout."""
    from allowhelp.broker.tunnel.admission import MAX_STARTUPS, MAX_STARTUPS_PER_ADDRESS

    broker, agent = enrolled(fleet)
    port = port_of(broker.tunnel)
    hogs: list[socket.socket] = []

    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        sock.settimeout(2)
        return sock

    try:
        sources = [f"127.0.0.{n}" for n in range(2, 2 + MAX_STARTUPS // MAX_STARTUPS_PER_ADDRESS)]
        for source in sources:
            for _ in range(MAX_STARTUPS_PER_ADDRESS):
                hogs.append(connect(source))
        assert hogs[-1].recv(4).startswith(b"SSH-")  # the last hog was admitted
        waiting = connect("127.0.0.99")
        with pytest.raises(TimeoutError):  # every slot taken: it waits, unanswered
            waiting.recv(4)
        agent.start("--reconnect-cap", "1")
        time.sleep(3)
        assert not online(broker, agent.agent_id)
    finally:
        for hog in hogs:
            hog.close()
    assert waiting.recv(4).startswith(b"SSH-")  # room again: the waiting one is served
    waiting.close()
    wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to get in once there is room")
    greedy = [connect("127.0.0.50") for _ in range(MAX_STARTUPS_PER_ADDRESS + 1)]
    try:
        assert greedy[-1].recv(4) == b""  # over its address's share: closed at accept
    finally:
        for sock in greedy:
            sock.close()
    assert broker.proc is not None and broker.proc.poll() is None
