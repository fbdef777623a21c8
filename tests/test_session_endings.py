"""Sessions end with the right reason when a process goes away."""

from __future__ import annotations

import json
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
