"""Agents fail over between broker nodes (#21, docs/multinode.md).

Real nodes on one real PostgreSQL, a real agent: it learns the other nodes'
addresses from the node it is connected to (``nodes.list``), and when that node
is killed with -9 it comes back through another one, where a technician opens a
shell on it; the session that ran on the dead node is ended by the living one.
A node with another PKI on the same database is listed too, and refused by the
agent (its key is not the pinned one), which goes on to the next.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    online,
    running_fleet,
    staffed_broker,
    wait_for,
)
from terminalkit import consented_shell, shell_says

FIRST_ID = "0" * 32  # sorts before any random node id: listed first


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str, **kwargs: Any) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in home.data.iterdir():
        if item.name in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
            shutil.copy2(item, data / item.name)  # the documented files, not node.id
    return fleet.broker(name, store=pg_url, **kwargs).start()


def _stranger(fleet: Fleet, pg_url: str) -> Broker:
    """A node on the same database with a PKI of its own (not joined as documented),
    whose id sorts first, so that agents are told it before the good nodes."""
    data = fleet.root / "stranger"
    data.mkdir(mode=0o700)
    (data / "node.id").write_text(FIRST_ID + "\n")
    return fleet.broker("stranger", store=pg_url).start()


def _known(agent: Agent) -> dict[str, list[str]]:
    try:
        known: dict[str, list[str]] = json.loads((agent.config / "nodes.json").read_text())
    except (OSError, ValueError):
        return {}
    return known


def _tunnel_of(broker: Broker) -> str:
    return "localhost:" + broker.tunnel.rpartition(":")[2]


async def test_an_agent_fails_over_to_another_node_and_refuses_a_stranger(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_b, agent):
        node_a = _node(fleet, node_b, pg_url, "node-a")
        stranger = _stranger(fleet, pg_url)
        # Node B tells its agent every live node within a heartbeat (5 s).
        wanted = {_tunnel_of(node_a), _tunnel_of(node_b), _tunnel_of(stranger)}
        wait_for(lambda: set(_known(agent).get("tunnels", [])) == wanted, 20, "the agent to learn")
        known = _known(agent)
        assert known["tunnels"][0] == _tunnel_of(stranger)  # tried before node A
        assert len(known["urls"]) == 3 and all(u.startswith("wss://") for u in known["urls"])
        assert (agent.config / "nodes.json").stat().st_mode & 0o777 == 0o600

        desk_b = Desk.login(node_b, TECH, TECH_PW)
        on_b = consented_shell(desk_b, agent)  # running on B when B dies
        desk_b.close()
        mark = agent.log.stat().st_size
        connected = node_b.audit_types().count("agent.connected")  # one chain for all nodes
        node_b.kill()  # -9: no goodbye
        killed = time.monotonic()
        wait_for(lambda: online(node_a, agent.agent_id), 30, "the agent back through node A")
        failover = time.monotonic() - killed
        said = agent.log.read_text()[mark:]
        # The stranger was tried (listed first) and refused: its key is not the pinned one.
        assert "refused a tunnel peer: not the pinned broker" in said, said
        assert f"the SSH port of {_tunnel_of(stranger)}: " in said, said
        assert f"reached the broker by the SSH port of {_tunnel_of(node_a)}" in said, said
        assert not online(stranger, agent.agent_id)
        assert node_a.audit_types().count("agent.connected") == connected + 1  # by node A

        desk_a = Desk.login(node_a, TECH, TECH_PW)
        ended = desk_a.wait_state(on_b, "ended", timeout=90)  # B's heartbeat goes stale
        assert ended["end_reason"] in ("broker_restart", "agent_lost")
        assert "session.ended" in node_a.audit_types()
        desk_a.close()
        await shell_says(node_a, agent, "echo failed-$((20+1))-over", b"failed-21-over")
        assert agent.proc is not None and agent.proc.poll() is None
        print(f"failover took {failover:.1f} s")
        assert failover < 30
        # Restarted while its enrolled node is still down, the agent finds A from the
        # list it kept (nodes.json), not from anything given anew.
        agent.stop()
        wait_for(lambda: not online(node_a, agent.agent_id), 20, "the agent to leave")
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: online(node_a, agent.agent_id), 30, "the agent back from its list")


def test_an_agent_on_the_https_port_fails_over_to_https_ports(tmp_path: Path, pg_url: str) -> None:
    with staffed_broker(tmp_path, store=pg_url) as fleet:
        node_b = fleet.brokers[0]
        node_b.stop()
        node_b.tunnel = "off"  # agents reach the nodes on their HTTPS ports alone
        node_b.start()
        agent = fleet.agent()
        assert agent.enroll(node_b.token()).returncode == 0
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: online(node_b, agent.agent_id), 30, "the agent online over HTTPS")
        node_a = _node(fleet, node_b, pg_url, "node-a", tunnel="off")
        url_a = node_a.url.replace("https://", "wss://") + "/api/v1/tunnel"
        wait_for(lambda: url_a in _known(agent).get("urls", []), 20, "the agent to learn A")
        assert _known(agent)["tunnels"] == []  # no node has a raw SSH port
        node_b.kill()
        wait_for(lambda: online(node_a, agent.agent_id), 30, "the agent back through node A")
        assert f"by the HTTPS port of {url_a}" in agent.log.read_text()
        assert [a["id"] for a in node_a.agents(ADMIN, ADMIN_PW) if a["online"]] == [agent.agent_id]
