"""Sessions end with the right reason when a process goes away."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    agent_call,
    broker_cli,
    online,
    running_fleet,
    wait_for,
    wait_pending,
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Fleet, Broker, Agent]]:
    with running_fleet(tmp_path, agent_args=("--reconnect-cap", "1")) as running:
        yield running


def active_session(desk: Desk, agent: Agent) -> str:
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    assert agent_call(agent, "allow", session["id"]).returncode == 0
    desk.wait_state(session["id"], "active")
    return str(session["id"])


def test_agent_killed_ends_its_sessions_as_agent_lost(
    running: tuple[Fleet, Broker, Agent],
) -> None:
    _, broker, agent = running
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        session_id = active_session(desk, agent)
        assert agent.proc is not None
        agent.proc.kill()
        agent.proc.wait(10)
        ended = desk.wait_state(session_id, "ended", timeout=20)
        assert ended["end_reason"] == "agent_lost"
    finally:
        desk.close()


def test_broker_killed_sessions_end_as_broker_restart_and_grants_are_dropped(
    running: tuple[Fleet, Broker, Agent],
) -> None:
    _, broker, agent = running
    desk = Desk.login(broker, TECH, TECH_PW)
    session_id = active_session(desk, agent)
    desk.close()
    status = json.loads(agent_call(agent, "pending", "--json").stdout)
    assert status == []
    broker.kill()
    # The tunnel is gone: the agent must not keep a grant the broker forgot.
    wait_for(
        lambda: "tunnel closed" in agent.log.read_text(), 20, "the agent to notice the broker died"
    )
    assert agent_call(agent, "end", session_id).returncode == 2  # nothing left to end
    broker.start()
    wait_for(lambda: online(broker, agent.agent_id), 30, "agent back")
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        final = desk.session(session_id)
        assert final["state"] == "ended" and final["end_reason"] == "broker_restart"
    finally:
        desk.close()
    verify = broker_cli("audit", "verify", "--data", str(broker.data))
    assert verify.returncode == 0, verify.stdout


def test_broker_stopping_ends_active_sessions_and_tells_the_agent(
    running: tuple[Fleet, Broker, Agent],
) -> None:
    _, broker, agent = running
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        session_id = active_session(desk, agent)
    finally:
        desk.close()
    assert broker.stop() == 0  # SIGTERM: a clean stop
    records = [
        json.loads(line)
        for line in broker_cli("audit", "export", "--data", str(broker.data)).stdout.splitlines()
    ]
    ended = [r for r in records if r["type"] == "session.ended" and r["target"] == session_id]
    assert ended and ended[0]["details"]["end_reason"] == "broker_restart"
    assert records[-1]["type"] == "broker.stopped"
    wait_for(
        lambda: f"session={session_id} ended by the broker" in agent.log.read_text(),
        10,
        "the agent to drop the grant",
    )


def test_audit_events_reach_a_syslog_collector(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    port = collector.getsockname()[1]
    fleet = Fleet(tmp_path)
    try:
        broker = fleet.broker(extra=["--syslog", f"udp://127.0.0.1:{port}"]).start()
        broker.add_user(TECH, TECH_PW)
        with broker.sync_client() as client:
            client.post("/api/v1/login", json={"username": TECH, "password": "wrong password!"})
        lines: list[str] = []
        while not any("auth.login.failed" in line for line in lines):
            lines.append(collector.recv(65536).decode())
        failed = next(line for line in lines if "auth.login.failed" in line)
        assert failed.startswith("<")  # PRI, RFC 5424
        assert " allowhelp " in failed and "wrong password" not in failed
    finally:
        fleet.close()
        collector.close()
