"""Agents fail over between broker nodes (#21, docs/multinode.md).

Real nodes on one real PostgreSQL, a real agent: it learns the other nodes'
addresses from the node it is connected to (``nodes.list``), and when that node
is killed with -9 it comes back through another one, where a technician opens a
shell on it; the session that ran on the dead node is ended by the living one.
A node with another PKI on the same database is listed too, and refused by the
agent (its key is not the pinned one), which goes on to the next. Each agent orders
the nodes its own way (``agent/peers.py``), so a dead node's agents spread over the
live ones.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from allowhelp.agent.peers import spread
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
from pgkit import free_port
from terminalkit import consented_shell, shell_says


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str, **kwargs: Any) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in home.data.iterdir():
        if item.name in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
            shutil.copy2(item, data / item.name)  # the documented files, not node.id
    return fleet.broker(name, store=pg_url, **kwargs).start()


def _stranger(fleet: Fleet, pg_url: str, agent: Agent, before: Broker) -> Broker:
    """A node on the same database with a PKI of its own (not joined as documented),
    on a tunnel port that ``agent``'s own order of the nodes (``spread``) puts before
    ``before``'s: the agent tries the stranger first when its node dies."""
    for _ in range(200):
        port = free_port()
        ranked = spread((f"localhost:{port}", _tunnel_of(before)), agent.agent_id)
        if ranked[0] == f"localhost:{port}":
            return fleet.broker("stranger", store=pg_url, tunnel=f"127.0.0.1:{port}").start()
    raise AssertionError("no free port ranks before the good node")  # 2**-200 by chance


def _known(agent: Agent) -> dict[str, list[str]]:
    try:
        known: dict[str, list[str]] = json.loads((agent.config / "nodes.json").read_text())
    except (OSError, ValueError):
        return {}
    return known


def _learned(agent: Agent, tunnels: set[str]) -> bool:
    return set(_known(agent).get("tunnels", [])) == tunnels


def _tunnel_of(broker: Broker) -> str:
    return "localhost:" + broker.tunnel.rpartition(":")[2]


async def test_an_agent_fails_over_to_another_node_and_refuses_a_stranger(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_b, agent):
        node_a = _node(fleet, node_b, pg_url, "node-a")
        stranger = _stranger(fleet, pg_url, agent, before=node_a)
        # Node B tells its agent every live node within a heartbeat (5 s).
        wanted = {_tunnel_of(node_a), _tunnel_of(node_b), _tunnel_of(stranger)}
        wait_for(lambda: set(_known(agent).get("tunnels", [])) == wanted, 20, "the agent to learn")
        known = _known(agent)
        mine = spread(tuple(known["tunnels"]), agent.agent_id)  # the agent's own order
        assert mine.index(_tunnel_of(stranger)) < mine.index(_tunnel_of(node_a))
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
        # The stranger was tried (first in this agent's order) and refused: not the pinned key.
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


def test_a_dead_nodes_agents_spread_over_the_live_nodes(tmp_path: Path, pg_url: str) -> None:
    """Three nodes; agents on node B, chosen so that their own orders of the nodes
    differ; B killed with -9: each comes back on the live node its order puts first,
    so they land on more than one node, and all within the bound."""
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_b, first):
        # A's and C's tunnel ports are chosen first, so that the agents are enrolled
        # before A and C start: a node learns a key enrolled elsewhere at its next beat
        # (5 s), and one that has not yet refuses the agent, which goes on to the next.
        port_a = free_port()
        port_c = next(p for p in iter(free_port, 0) if p != port_a)
        tunnels = (f"localhost:{port_a}", _tunnel_of(node_b), f"localhost:{port_c}")

        def lands(agent: Agent) -> str:  # the first live node in the agent's order
            return next(t for t in spread(tunnels, agent.agent_id) if t != _tunnel_of(node_b))

        token = node_b.token("--uses", "30")
        agents = [first]
        while len({lands(a) for a in agents}) < 2 or len(agents) < 4:
            assert len(agents) < 30, "30 agents all put the same node first"  # 2**-29
            agent = fleet.agent(f"agent-{len(agents)}")
            assert agent.enroll(token).returncode == 0
            agents.append(agent)
        node_a = _node(fleet, node_b, pg_url, "node-a", tunnel=f"127.0.0.1:{port_a}")
        node_c = _node(fleet, node_b, pg_url, "node-c", tunnel=f"127.0.0.1:{port_c}")
        assert (_tunnel_of(node_a), _tunnel_of(node_c)) == (tunnels[0], tunnels[2])
        by_tunnel = {_tunnel_of(node_a): node_a, _tunnel_of(node_c): node_c}
        for agent in agents[1:]:
            agent.start("--reconnect-cap", "2")
        for agent in agents:
            wait_for(partial(online, node_b, agent.agent_id), 30, "the agents on node B")
            wait_for(partial(_learned, agent, set(tunnels)), 20, "the agents to learn the nodes")
        node_b.kill()  # -9
        killed = time.monotonic()
        for agent in agents:
            home = by_tunnel[lands(agent)]
            wait_for(partial(online, home, agent.agent_id), 30, "the agent on its node")
        back = time.monotonic() - killed
        on_a = [a.agent_id for a in agents if online(node_a, a.agent_id)]
        on_c = [a.agent_id for a in agents if online(node_c, a.agent_id)]
        print(f"{len(agents)} agents back in {back:.1f} s: {len(on_a)} on A, {len(on_c)} on C")
        assert on_a and on_c and len(on_a) + len(on_c) == len(agents)
        assert back < 30


def test_an_agent_whose_node_is_down_before_first_contact_finds_another(
    tmp_path: Path, pg_url: str
) -> None:
    """The enrolment answer lists the live nodes: a PC enrolled on node B, which dies
    before the PC ever connected, comes online through node A all the same. A listed
    stranger (another PKI on the same database) grants nothing: with A down too, the
    PC refuses it and waits for a node with the pinned key."""
    with staffed_broker(tmp_path, store=pg_url) as fleet:
        node_a = fleet.brokers[0]
        stranger = fleet.broker("stranger", store=pg_url).start()  # a PKI of its own
        node_b = _node(fleet, node_a, pg_url, "node-b")  # A and the stranger live: listed
        agent = fleet.agent()
        assert agent.enroll(node_b.token()).returncode == 0  # the token names node B
        enrolled = json.loads((agent.config / "agent.json").read_text())
        assert enrolled["broker_url"] == node_b.url  # the enrolled broker stays B's
        known = _known(agent)
        wanted = {_tunnel_of(node_a), _tunnel_of(node_b), _tunnel_of(stranger)}
        assert set(known["tunnels"]) == wanted and len(known["urls"]) == 3
        assert (agent.config / "nodes.json").stat().st_mode & 0o777 == 0o600
        node_b.kill()  # -9, before the agent ever dialled
        node_a.stop()  # and A away for now: the stranger is the only node that answers
        agent.start("--reconnect-cap", "2")
        tried = f"the SSH port of {_tunnel_of(stranger)}: "
        refused = "refused a tunnel peer: not the pinned broker"  # the agent's own check
        # (Until its next beat the stranger does not know the new agent's key and drops
        # it first; from then on it is the agent that refuses the stranger.)
        wait_for(
            lambda: tried in (said := agent.log.read_text()) and refused in said,
            40,
            "the agent to refuse the stranger",
        )
        assert not online(stranger, agent.agent_id)
        node_a.start()  # on the same ports
        wait_for(lambda: online(node_a, agent.agent_id), 30, "the agent online through A")
        said = agent.log.read_text()  # by A's SSH port, or its HTTPS port if that was up first
        url_a = node_a.url.replace("https://", "wss://") + "/api/v1/tunnel"
        reached = (f"by the SSH port of {_tunnel_of(node_a)}", f"by the HTTPS port of {url_a}")
        assert any(f"reached the broker {way}" in said for way in reached), said
        assert not online(stranger, agent.agent_id)
