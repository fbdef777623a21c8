"""Broker nodes on PostgreSQL: a whole broker, two nodes on one database, one
audit chain from three processes, and the database going away under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    run_cli,
    running_fleet,
    wait_for,
)
from pgkit import own_cluster
from terminalkit import consented_shell, shell_says


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


LOAD_PW = "load password 1234"
_APPENDER = """
import sys
from allowhelp.broker.audit.opening import open_audit
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
    # $ALLOWHELP_STORE instead of --store (what serve's full check uses): the same chain.
    head = run_cli("allowhelp.broker.cli.audit", "audit", "head", env={"ALLOWHELP_STORE": pg_url})
    assert head.returncode == 0 and head.stdout.startswith(f"{3 * each}:"), head.stderr
    exported = broker_cli("audit", "export", "--store", pg_url)
    actors = [json.loads(line)["actor"] for line in exported.stdout.splitlines()]
    assert sorted(set(actors)) == ["node0", "node1", "node2"]
    assert len(actors) == 3 * each


def test_the_chain_refuses_edits_in_the_database(pg_url: str) -> None:
    import psycopg

    from allowhelp.broker.audit.opening import open_audit
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


@contextlib.contextmanager
def _login_load(broker: Broker, users: list[str]) -> Iterator[list[int]]:
    """Each user logs in every 0.2 s on a thread of its own; the statuses as they come.

    Paced: a refused login counts toward the login throttle (model/throttle.py:
    10 per user per 15 min), and a throttled user would stay out after the outage.
    """
    statuses: list[int] = []
    stop = threading.Event()

    def work(user: str) -> None:
        with broker.sync_client() as client:
            while not stop.wait(0.2):
                body = {"username": user, "password": LOAD_PW}
                statuses.append(client.post("/api/v1/login", json=body).status_code)

    threads = [threading.Thread(target=work, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def test_the_database_restarting_fails_closed_then_recovers(tmp_path: Path) -> None:
    with own_cluster() as cluster:
        url = cluster.database()
        with running_fleet(tmp_path, store=url) as (_, broker, agent):
            desk = Desk.login(broker, TECH, TECH_PW)
            users = [f"load{n}" for n in range(3)]
            for user in users:
                broker.add_user(user, LOAD_PW)
            with _login_load(
                broker, users
            ) as statuses:  # logins all along: each audited or refused
                wait_for(lambda: statuses.count(200) >= 5, 30, "logins under load")
                cluster.stop("immediate")
                health = desk.client.get("/healthz")
                assert health.status_code == 503 and health.json()["status"] == "unavailable"
                refused = desk.request(agent.agent_id)
                assert refused.status_code == 503, refused.text
                wait_for(lambda: statuses.count(503) >= 2, 30, "logins refused while down")
                cluster.start()
                last: list[str] = []

                def healthy() -> bool:
                    answer = desk.client.get("/healthz")
                    last[:] = [answer.text]
                    return answer.status_code == 200

                try:
                    wait_for(healthy, 30, "healthz ok")
                except AssertionError:
                    raise AssertionError(f"healthz: {last}, logins: {statuses}") from None
                done = len(statuses)
                wait_for(lambda: statuses[done:].count(200) >= 5, 30, "logins back")
            assert set(statuses) <= {200, 503}, statuses  # never a 500, never a hang
            asyncio.run(shell_says(broker, agent, "echo back-$((1+1))", b"back-2"))
            desk.close()
            logins_ok = broker.audit_types().count("auth.login.ok")
        answer = verify(url)
        assert answer["ok"] is True
        # Fail closed: no login was let in without its audit record (+1: the desk's own,
        # +1 by shell_says). More records than logins is allowed: a login audited just
        # before the database went away is refused for want of its web session.
        assert logins_ok >= statuses.count(200) + 2


def test_a_node_leaves_live_sessions_alone_and_ends_a_dead_nodes(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, agent):
        desk_a = Desk.login(node_a, TECH, TECH_PW)
        session_id = consented_shell(desk_a, agent)
        node_b = _second_node(fleet, node_a, pg_url)  # its start-up ends only stale sessions
        desk_b = Desk.login(node_b, TECH, TECH_PW)
        assert desk_b.session(session_id)["state"] == "active"
        assert desk_a.session(session_id)["state"] == "active"
        desk_a.close()
        node_a.kill()  # -9: no goodbye, its heartbeat stops
        ended = desk_b.wait_state(session_id, "ended", timeout=90)
        assert ended["end_reason"] == "broker_restart"
        desk_b.close()
    answer = verify(pg_url)
    assert answer["ok"] is True


def test_a_copied_node_id_is_refused(tmp_path: Path, pg_url: str) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, _):
        copy = fleet.root / "copy"
        copy.mkdir(mode=0o700)
        for name in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key", "node.id"):
            shutil.copy2(node_a.data / name, copy / name)
        done = broker_cli("serve", "--data", str(copy), "--store", pg_url, "--https",
                          "127.0.0.1:0", "--tunnel", "127.0.0.1:0")  # fmt: skip
        assert done.returncode != 0
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "node.id" in errors[0], done.stderr
        assert node_a.proc is not None and node_a.proc.poll() is None  # A goes on


async def test_a_node_cut_off_from_the_database_stops_its_sessions(tmp_path: Path) -> None:
    """Before the other nodes take it for dead (30 s), a node that cannot beat for 20 s
    stops its sessions' access; their end records follow once the database is back."""
    with own_cluster() as cluster:
        url = cluster.database()
        with running_fleet(tmp_path, store=url) as (_, broker, agent):
            desk = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
            session_id = await asyncio.to_thread(consented_shell, desk, agent)
            async with websockets.connect(
                desk.ws_url(session_id),
                ssl=broker.ssl_context(),
                origin=broker.url,  # type: ignore[arg-type]
                additional_headers={"Cookie": desk.cookie_header()},
            ) as ws:
                await asyncio.to_thread(cluster.stop, "immediate")
                with pytest.raises(websockets.ConnectionClosed):  # access stopped
                    async with asyncio.timeout(60):
                        while True:
                            await ws.recv()
            await asyncio.to_thread(cluster.start)
            ended = await asyncio.to_thread(desk.wait_state, session_id, "ended", 40)
            assert ended["end_reason"] == "broker_restart"
            desk.close()
        assert verify(url)["ok"] is True
