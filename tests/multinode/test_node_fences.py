"""What one node does must hold on the others (#21, docs/multinode.md): an agent
removed on node B loses its live tunnel on node A within a heartbeat, audited; a
session ended by one node while another was cut off from the database is ended once.
Real nodes on one real PostgreSQL (one node through a TCP proxy the test cuts), a
real agent."""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    online,
    running_fleet,
    wait_for,
)
from netkit import CuttableProxy
from terminalkit import consented_shell

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


def test_of_two_nodes_claiming_one_agent_the_older_tunnel_is_dropped(
    tmp_path: Path, pg_url: str
) -> None:
    """An agent has one tunnel, its newest, across nodes as within one: a copy of the
    PC's agent folder (a cloned PC) dials node B while the PC holds its tunnel on
    node A; A sees B named as the holder two beats in a row and drops its older
    tunnel, audited (``held_elsewhere``), and nothing else is dropped meanwhile."""
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, agent):
        node_b = _node(fleet, node_a, pg_url, "node-b")
        clone = fleet.agent("clone")
        shutil.copytree(agent.config, clone.config)
        (clone.config / "nodes.json").unlink(missing_ok=True)
        settings = json.loads((clone.config / "agent.json").read_text())
        settings["tunnel_port"] = int(node_b.tunnel.rpartition(":")[2])
        settings["tunnel_url"] = ""  # the raw SSH port of node B alone
        (clone.config / "agent.json").write_text(json.dumps(settings))
        mark_a = node_a.log.stat().st_size
        assert _records(pg_url, "agent.tunnel.dropped") == []
        clone.start("--reconnect-cap", "30")  # stays on B: a long wait before another dial
        wait_for(lambda: online(node_b, agent.agent_id), 20, "the clone on node B")
        dialled = time.monotonic()
        wait_for(
            lambda: "its older tunnel here is dropped" in node_a.log.read_text()[mark_a:],
            4 * HEARTBEAT,
            "node A to drop its older tunnel",
        )
        took = time.monotonic() - dialled
        print(f"node A dropped the older tunnel {took:.1f} s after the clone reached node B")
        assert took >= HEARTBEAT * 0.5  # two beats in a row, never on the first sight
        dropped = _records(pg_url, "agent.tunnel.dropped")
        assert dropped, "the drop is audited"
        first = dropped[0]
        assert (first["target"], first["code"]) == (agent.agent_id, "AH2011")
        details = first["details"]
        assert isinstance(details, dict)
        assert details["reason"] == "held_elsewhere"
        assert details["node"] != details["holder"]
        clone.stop()


def _via(proxy: CuttableProxy, pg_url: str) -> str:
    """The same database through ``proxy``: what one node alone loses when it is cut."""
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition(":")[0] + f":{proxy.port}"))


def test_a_session_ended_by_another_node_while_cut_off_is_ended_once(
    tmp_path: Path, pg_url: str
) -> None:
    """Node B, cut off from the database, stops its session and owes its end record;
    node A takes B for dead and ends the session; B back: its owed end is not written
    a second time, and the chain holds exactly one ``session.ended`` for it."""
    proxy = CuttableProxy(urlsplit(pg_url).port or 5432)
    proxy.restore()
    try:
        with running_fleet(tmp_path, store=_via(proxy, pg_url)) as (fleet, node_b, agent):
            node_a = _node(fleet, node_b, pg_url, "node-a")  # straight to the database
            desk = Desk.login(node_b, TECH, TECH_PW)
            session_id = consented_shell(desk, agent)
            desk.close()
            mark = node_b.log.stat().st_size
            proxy.cut()  # B alone loses the database
            said = partial(_since, node_b.log, mark)
            wait_for(lambda: "this node lost the database" in said(), 40, "B to stop it")
            ended = partial(_ended, pg_url, session_id)
            wait_for(lambda: len(ended()) == 1, 60, "node A to end B's session")
            assert ended()[0]["actor"] == "system"
            proxy.restore()
            gave_up = "was ended by another node while this one was cut off"
            wait_for(lambda: gave_up in said() or len(ended()) > 1, 60, "B to try its owed end")
            assert len(ended()) == 1, ended()  # not a second record
            assert gave_up in said()
            desk_a = Desk.login(node_a, TECH, TECH_PW)
            assert desk_a.session(session_id)["state"] == "ended"
            desk_a.close()
            assert len(ended()) == 1, ended()
            wait_for(lambda: online(node_b, agent.agent_id), 30, "B serving again")
        assert len(ended()) == 1, ended()  # nor at B's shutdown
        assert verify(pg_url)["ok"] is True
    finally:
        proxy.close()


def _since(path: Path, mark: int) -> str:
    return path.read_text()[mark:]


def _ended(pg_url: str, session_id: str) -> list[dict[str, object]]:
    return [r for r in _records(pg_url, "session.ended") if r["target"] == session_id]


def verify(url: str) -> dict[str, object]:
    done = broker_cli("audit", "verify", "--store", url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer
