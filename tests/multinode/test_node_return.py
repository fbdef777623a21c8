"""Agents move back to their first node when it returns (#21, docs/multinode.md): an
agent that failed over to another node, with no session running, dials its enrolled
node again every calm, jittered while (ten times its --reconnect-cap) and moves its
tunnel there once it answers; with a session running it stays where it is until the
session is over. Real nodes on one real PostgreSQL, a real agent."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    online,
    running_fleet,
    wait_for,
)
from terminalkit import consented_shell

CAP = 1.0  # --reconnect-cap: the agent looks for its first node every 5 to 15 s
CALM_MAX = CAP * 10 * 1.5  # agent/tunnel.py RETURN_EVERY, jittered by half


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for name_ in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / name_, data / name_)
    return fleet.broker(name, store=pg_url).start()


def _knows(agent: Agent, node: Broker) -> bool:
    try:
        known = json.loads((agent.config / "nodes.json").read_text())
    except (OSError, ValueError):
        return False
    return "localhost:" + node.tunnel.rpartition(":")[2] in known.get("tunnels", [])


def test_an_agent_moves_back_to_its_first_node_when_no_session_runs(
    tmp_path: Path, pg_url: str
) -> None:
    agent_args = ("--reconnect-cap", str(CAP))
    with running_fleet(tmp_path, store=pg_url, agent_args=agent_args) as (fleet, first, agent):
        other = _node(fleet, first, pg_url, "node-other")
        wait_for(lambda: _knows(agent, other), 20, "the agent to learn the other node")
        first.kill()  # -9: the agent fails over to the other node
        wait_for(lambda: online(other, agent.agent_id), 30, "the agent on the other node")
        desk = Desk.login(other, TECH, TECH_PW)
        session_id = consented_shell(desk, agent)  # a session runs on the other node
        mark = agent.log.stat().st_size
        first.start()  # back, on the same addresses
        # No fact to await for "stays": one whole calm interval and more must pass
        # with the first node live and the agent still where its session runs.
        time.sleep(CALM_MAX + 2)
        assert "moves back" not in agent.log.read_text()[mark:]
        assert online(other, agent.agent_id) and not online(first, agent.agent_id)
        assert desk.session(session_id)["state"] == "active"
        assert desk.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 200
        ended = time.monotonic()
        desk.close()
        # Its session over, the agent moves back within a calm interval or two.
        wait_for(lambda: online(first, agent.agent_id), 2 * CALM_MAX + 10, "the move back")
        took = time.monotonic() - ended
        print(f"the agent moved back {took:.1f} s after its session ended")
        said = agent.log.read_text()[mark:]
        assert "moves back to the SSH port: it is live again" in said, said
        wait_for(lambda: not online(other, agent.agent_id), 20, "the other node to let it go")
        # On its first node now: it stays there (no move back and forth).
        settled = agent.log.stat().st_size
        time.sleep(CALM_MAX + 2)
        assert "moves back" not in agent.log.read_text()[settled:]
        assert online(first, agent.agent_id)
