"""Broker nodes on PostgreSQL: a whole broker, two nodes on one database, one
audit chain from three processes, and the database going away under load."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    running_fleet,
    wait_for,
)
from pgkit import Cluster
from terminalkit import shell_says


def verify(url: str) -> dict[str, object]:
    done = broker_cli("audit", "verify", "--store", url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


async def test_a_broker_on_postgresql_opens_a_shell(tmp_path: Path, pg_url: str) -> None:
    with running_fleet(tmp_path, store=pg_url) as (_, broker, agent):
        await shell_says(broker, agent, "echo pg-$((40+2))", b"pg-42")
        types = broker.audit_types()
        assert {"user.created", "agent.enrolled", "session.started"} <= set(types)
        # Nothing of the store or the audit in the data folder: all in the database.
        assert not (broker.data / "broker.sqlite3").exists()
        assert not (broker.data / "audit.sqlite3").exists()
        assert "pg secret" not in broker.log.read_text()  # the password is never logged
    assert verify(pg_url)["count"] == len(types) + 1  # + the session's end, on shutdown


def _second_node(fleet: Fleet, first: Broker, pg_url: str) -> Broker:
    """Node B: a copy of node A's PKI (the documented join step), its own listeners."""
    data = fleet.root / "node-b"
    data.mkdir(mode=0o700)
    for item in first.data.iterdir():
        if item.is_file() and item.suffix in (".pem", ".key", "") and "sqlite" not in item.name:
            shutil.copy2(item, data / item.name)
    return fleet.broker("node-b", store=pg_url).start()


def test_two_nodes_share_users_and_one_audit_chain(tmp_path: Path, pg_url: str) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, agent):
        node_b = _second_node(fleet, node_a, pg_url)
        assert (node_b.data / "ca.pem").read_bytes() == (node_a.data / "ca.pem").read_bytes()
        for node in (node_a, node_b, node_a, node_b):  # each login is audited on its node
            Desk.login(node, TECH, TECH_PW).close()
        # Node B sees the agent node A enrolled (online only where it is connected).
        assert [a["id"] for a in node_b.agents(ADMIN, ADMIN_PW)] == [agent.agent_id]
        logins = [t for t in node_b.audit_types() if t == "auth.login.ok"]
        assert len(logins) >= 5  # four here, one by node_b.agents()
    answer = verify(pg_url)
    assert answer["ok"] is True and answer["first_bad_seq"] is None


_APPENDER = """
import sys
from allowhelp.broker.audit.log import open_audit
from allowhelp.broker.model.database import PostgresUrl
audit = open_audit(PostgresUrl.parse(sys.argv[1]))
for i in range(int(sys.argv[2])):
    audit.append("user.created", actor="node" + sys.argv[3], target=f"u{i}")
audit.close()
"""


def test_three_processes_append_one_chain(pg_url: str) -> None:
    each = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, pg_url, str(each), str(n)])
        for n in range(3)
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    answer = verify(pg_url)
    assert answer["count"] == 3 * each and answer["last_seq"] == 3 * each
    exported = broker_cli("audit", "export", "--store", pg_url)
    actors = [json.loads(line)["actor"] for line in exported.stdout.splitlines()]
    assert sorted(set(actors)) == ["node0", "node1", "node2"]
    assert len(actors) == 3 * each


def test_the_chain_refuses_edits_in_the_database(pg_url: str) -> None:
    import psycopg

    from allowhelp.broker.audit.log import open_audit
    from allowhelp.broker.model.database import PostgresUrl

    audit = open_audit(PostgresUrl.parse(pg_url))
    audit.append("user.created", actor="system:cli", target="ann")
    audit.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
    assert verify(pg_url)["count"] == 1


def test_a_database_down_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = "postgresql://ah:hidden@127.0.0.1:1/allowhelp"
    done = broker_cli("serve", "--data", str(tmp_path / "d"), "--store", url, "--https",
                      "127.0.0.1:0", "--tunnel", "127.0.0.1:0")  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cannot reach" in errors[0], done.stderr
    assert "hidden" not in done.stderr and "Traceback" not in done.stderr
    bad = broker_cli("audit", "verify", "--store", "mysql://x/y")
    assert bad.returncode == 2 and "postgresql://" in bad.stderr


def test_the_database_restarting_fails_closed_then_recovers(tmp_path: Path) -> None:
    from pgkit import make_cluster

    root = Path(__import__("tempfile").mkdtemp(prefix="ahpg-"))
    root.chmod(0o755)
    cluster: Cluster = make_cluster(root / "cluster")
    try:
        url = cluster.database()
        with running_fleet(tmp_path, store=url) as (_, broker, agent):
            desk = Desk.login(broker, TECH, TECH_PW)
            cluster.stop("immediate")
            health = desk.client.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            refused = desk.request(agent.agent_id)
            assert refused.status_code == 503, refused.text
            cluster.start()
            wait_for(lambda: desk.client.get("/healthz").status_code == 200, 30, "healthz ok")
            asyncio.run(shell_says(broker, agent, "echo back-$((1+1))", b"back-2"))
            desk.close()
        answer = verify(url)
        assert answer["ok"] is True
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
