"""A doorbell fails over between broker nodes as the tunnel does (#19 with #21).

Two real nodes on one real PostgreSQL and a real agent idling on its doorbell
(``run --idle doorbell``). Its first full agent learns the other node from the
enrolled one (``nodes.list`` → ``nodes.json``); when the enrolled node is killed,
the doorbell rings in from the other one (``doorbellnodes.py``) and the PC stays
online there; a technician's request on that node wakes the full agent, whose
tunnel goes to the node the doorbell rang from first (``ALLOWHELP_DOORBELL_NODE``):
no failed try at the dead node, and the prompt arrives. The enrolled node back, the
idle doorbell moves back to it within a calm while (ten times ``--reconnect-cap``,
jittered by half), as the tunnel does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from allowhelp.agent import doorbellnodes, peers
from harness import (
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    log_mark,
    log_since,
    online,
    staffed_broker,
    wait_for,
    wait_pending,
)


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)
    return fleet.broker(name, store=pg_url).start()


def _urls(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / "nodes.json").read_text()).get("urls", []))
    except (OSError, ValueError):
        return []


def test_the_doorbell_order_is_the_tunnel_s() -> None:
    urls = tuple(f"wss://node{i}.example.invalid:{443 + i}/api/v1/tunnel" for i in range(6))
    assert doorbellnodes.spread(urls, "agent-7") == peers.spread(urls, "agent-7")


def test_a_doorbell_stays_online_through_another_node(tmp_path: Path, pg_url: str) -> None:
    with staffed_broker(tmp_path, store=pg_url) as fleet:
        node_b = fleet.brokers[0]
        node_a = _node(fleet, node_b, pg_url, "node-a")
        agent = fleet.agent()
        assert agent.enroll(node_b.token()).returncode == 0
        agent.start(
            "--prompt", "none", "--idle", "doorbell", "--linger", "3", "--reconnect-cap", "1"
        )
        url_a = node_a.url.replace("https://", "wss://") + "/api/v1/tunnel"
        wait_for(lambda: url_a in _urls(agent.config), 20, "the agent to learn node A")
        wait_for(lambda: "is idle and ended" in agent.log.read_text(), 30, "the full agent ends")
        wait_for(lambda: "doorbell connected" in agent.log.read_text(), 20, "the doorbell")
        wait_for(lambda: online(node_b, agent.agent_id), 10, "online on the enrolled node")
        mark = log_mark(agent.log)
        node_b.kill()  # -9: its stream just breaks
        wait_for(lambda: online(node_a, agent.agent_id), 30, "online through node A")
        said = log_since(agent.log, mark)
        assert f"doorbell connected to the broker through {node_a.url}" in said, said
        assert "starting the full agent" not in said  # the doorbell alone moved
        woke = log_mark(agent.log)
        desk = Desk.login(node_a, TECH, TECH_PW)
        try:
            asked = desk.request(agent.agent_id, kind="shell", reason="through node A")
            assert asked.status_code == 201, asked.text
            wait_pending(agent, asked.json()["id"], timeout=20)
        finally:
            desk.close()
        said = log_since(agent.log, woke)
        assert "starting the full agent (the broker rang: consent.request)" in said, said
        # its tunnel went to node A first: the dead node's ways were not even tried
        assert "reached the broker by" not in said, said
        desk = Desk.login(node_a, TECH, TECH_PW)
        try:
            ended = desk.client.post(f"/api/v1/sessions/{asked.json()['id']}/end")
            assert ended.status_code == 200, ended.text
        finally:
            desk.close()
        wait_for(lambda: "is idle and ended" in log_since(agent.log, woke), 30, "idle again")
        back = log_mark(agent.log)
        node_b.start()  # back, on the same addresses
        wait_for(lambda: online(node_b, agent.agent_id), 45, "the doorbell back on node B")
        said = log_since(agent.log, back)
        assert "doorbell connected to the broker\n" in said, said  # the enrolled one
        wait_for(lambda: not online(node_a, agent.agent_id), 20, "node A to let it go")
        agent.stop()
        assert "Traceback" not in agent.log.read_text()
