"""``backup`` and ``restore`` with ``--store``: the shared PostgreSQL database by
pg_dump/pg_restore, the node's keys and recordings as for SQLite (node/pg_backup.py).

A real node on a real PostgreSQL with a real agent: backed up while it serves; the
database then damaged (audit records deleted behind the append-only triggers, so
``audit verify --store`` fails); restored into a new, empty database and folder:
the chain verifies, ``broker.restored`` follows the backup's head, and a node started
on the restore serves the same users. Bad inputs are refused with one line.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    broker_cli,
    running_fleet,
    staffed_broker,
)
from terminalkit import consented_shell


def _verify(url: str) -> tuple[int, dict[str, object]]:
    done = broker_cli("audit", "verify", "--store", url, "--json")
    answer: dict[str, object] = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, answer


def _records(url: str) -> list[dict[str, object]]:
    done = broker_cli("audit", "export", "--store", url)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _one_error(done: object) -> str:
    stderr = str(getattr(done, "stderr", ""))
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert getattr(done, "returncode", 0) == 2 and len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def test_a_postgresql_store_is_backed_up_damaged_and_restored(tmp_path: Path, pg_url: str) -> None:
    backup = tmp_path / "cluster.tar.gz"
    (tmp_path / "live").mkdir()
    with running_fleet(tmp_path / "live", store=pg_url) as (_, node, agent):
        desk = Desk.login(node, TECH, TECH_PW)
        live_session = consented_shell(desk, agent)  # live while the backup is taken
        done = broker_cli(
            "backup", "--data", str(node.data), "--store", pg_url, "--output", str(backup)
        )
        assert done.returncode == 0, done.stderr
        assert "pg secret" not in done.stdout + done.stderr  # the password never shown
        desk.close()
    assert backup.stat().st_mode & 0o777 == 0o600
    with tarfile.open(backup) as tar:
        names = tar.getnames()
        raw = tar.extractfile("manifest.json")
        assert raw is not None
        manifest = json.loads(raw.read())
    assert manifest["store"] == "postgresql"
    assert "data/postgresql.dump" in names and "data/broker.sqlite3" not in names
    assert {"data/ca.key", "data/tunnel_key"} <= set(names)
    assert live_session in manifest["open_sessions"]
    head_seq = int(manifest["audit_head"].split(":")[0])
    backed_up = _records(pg_url)[:head_seq]
    assert backed_up[-1]["type"] != "broker.restored"
    assert "broker.backup" in [r["type"] for r in backed_up]  # audited before the dump

    # Damage: records deleted behind the append-only triggers (a superuser can).
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        conn.execute("DELETE FROM audit WHERE seq IN (2, 3)")
        conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_update")
    code, answer = _verify(pg_url)
    assert code != 0 and answer.get("ok") is False

    # Never over a database with content, nor a PostgreSQL backup without --store.
    refused = broker_cli("restore", str(backup), "--data", str(tmp_path / "r0"), "--store", pg_url)
    assert "is not empty" in _one_error(refused) and "pg secret" not in refused.stderr
    assert "--store" in _one_error(
        broker_cli("restore", str(backup), "--data", str(tmp_path / "r1"))
    )
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r1").exists()

    fresh = _database(pg_url, "ah_restored_" + urlsplit(pg_url).path.strip("/")[-8:])
    with psycopg.connect(_database(pg_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{urlsplit(fresh).path.strip("/")}"')
    restored = tmp_path / "restored"
    done = broker_cli("restore", str(backup), "--data", str(restored), "--store", fresh)
    assert done.returncode == 0, done.stderr
    assert f"audit log intact: {head_seq} records" in done.stdout, done.stdout
    assert not (restored / "postgresql.dump").exists()  # no copy of the database left
    assert (restored / "ca.key").read_bytes() == (tmp_path / "live/broker/ca.key").read_bytes()

    code, answer = _verify(fresh)
    assert code == 0 and answer["ok"] is True, answer
    records = _records(fresh)
    assert records[:head_seq] == backed_up  # the chain as it was, seq for seq
    assert [r["type"] for r in records[head_seq:]] == ["broker.restored"]
    details = records[head_seq]["details"]
    assert isinstance(details, dict) and details["head"] == manifest["audit_head"]

    # A node started on the restore serves the same users; the live session ends.
    node = Broker(restored, store=fresh).start()
    try:
        assert [a["id"] for a in node.agents(ADMIN, ADMIN_PW)] == [agent.agent_id]
        desk = Desk.login(node, TECH, TECH_PW)
        ended = desk.wait_state(live_session, "ended", timeout=30)
        assert ended["end_reason"] == "broker_restart"
        desk.close()
    finally:
        node.stop()
    code, answer = _verify(fresh)
    assert code == 0 and answer["ok"] is True, answer


def test_a_backup_with_store_refuses_bad_inputs_in_one_line(tmp_path: Path, pg_url: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "b.tar"
    line = _one_error(
        broker_cli("backup", "--data", str(empty), "--store", pg_url, "--output", str(out))
    )
    assert "not a broker node's data folder" in line
    (tmp_path / "live").mkdir()
    unreachable = urlunsplit(urlsplit(pg_url)._replace(netloc="postgres:pw@127.0.0.1:1"))
    with running_fleet(tmp_path / "live", store=pg_url) as (_, node, _agent):
        line = _one_error(
            broker_cli(
                "backup", "--data", str(node.data), "--store", unreachable, "--output", str(out)
            )
        )
    assert "no backup taken" in line and ":pw@" not in line
    assert not out.exists() and not out.with_name("b.tar.partial").exists()
    # A SQLite backup is not loaded into a database: one line, nothing restored.
    (tmp_path / "sqlite").mkdir()
    with staffed_broker(tmp_path / "sqlite") as fleet:
        sqlite_backup = tmp_path / "sqlite.tar"
        folder = str(fleet.brokers[0].data)
        done = broker_cli("backup", "--data", folder, "--output", str(sqlite_backup))
        assert done.returncode == 0, done.stderr
    empty_db = _database(pg_url, "ah_empty_" + urlsplit(pg_url).path.strip("/")[-8:])
    with psycopg.connect(_database(pg_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{urlsplit(empty_db).path.strip("/")}"')
    target = tmp_path / "r2"
    line = _one_error(
        broker_cli("restore", str(sqlite_backup), "--data", str(target), "--store", empty_db)
    )
    assert "holds SQLite files" in line and not target.exists()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)  # nothing loaded


def test_the_backups_connection_breaks_when_the_database_host_goes_away(pg_url: str) -> None:
    """The snapshot's connection stays open for the whole pg_dump: it carries the store's
    TCP keepalives and ``tcp_user_timeout``, so a database host that vanishes breaks it
    instead of leaving ``backup`` waiting for ever."""
    from allowhelp.broker.model.database import PostgresUrl
    from allowhelp.broker.node.pg_backup import _connect
    from allowhelp.broker.pglink import link_options

    with _connect(PostgresUrl.parse(pg_url)) as conn:
        said = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
    for name, value in link_options().items():
        assert said[name] == str(value), (name, said[name])
