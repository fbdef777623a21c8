"""What one node does must hold on the others (#21, docs/multinode.md): an agent
removed on node B loses its live tunnel on node A within a heartbeat, audited.
Real nodes on one real PostgreSQL, a real agent."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from harness import ADMIN, ADMIN_PW, Broker, Fleet, broker_cli, online, running_fleet, wait_for

HEARTBEAT = 5.0  # node/cluster.py


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for name_ in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / name_, data / name_)
    return fleet.broker(name, store=pg_url).start()


def _records(pg_url: str, kind: str) -> list[dict[str, object]]:
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [record for record in records if record["type"] == kind]


def test_an_agent_removed_on_one_node_is_dropped_by_the_node_holding_it(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, agent):
        node_b = _node(fleet, node_a, pg_url, "node-b")
        assert online(node_a, agent.agent_id) and not online(node_b, agent.agent_id)
        mark_a, mark_agent = node_a.log.stat().st_size, agent.log.stat().st_size
        with node_b.sync_client() as admin:
            login = admin.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
            admin.headers["X-CSRF-Token"] = login.json()["csrf_token"]
            removed_at = time.monotonic()
            assert admin.delete(f"/api/v1/agents/{agent.agent_id}").status_code == 200
        # (The console no longer lists a removed agent: the agent's own log says when
        # its tunnel on A closed.)
        wait_for(
            lambda: "tunnel closed" in agent.log.read_text()[mark_agent:],
            3 * HEARTBEAT,
            "node A to drop the agent's tunnel",
        )
        took = time.monotonic() - removed_at
        print(f"dropped by node A {took:.1f} s after its removal on node B")
        assert took < 2 * HEARTBEAT
        said = node_a.log.read_text()[mark_a:]
        assert "was removed on another node: its tunnel is dropped" in said, said
        dropped = _records(pg_url, "agent.tunnel.dropped")
        assert [(r["target"], r["code"]) for r in dropped] == [(agent.agent_id, "AH2011")]
        details = dropped[0]["details"]
        assert isinstance(details, dict) and details["reason"] == "removed"
        # The agent dials again and is refused: its key is removed on every node.
        wait_for(
            lambda: "refused agent key" in node_a.log.read_text()[mark_a:], 30, "A to refuse it"
        )
        assert agent.proc is not None and agent.proc.poll() is None  # it keeps trying
