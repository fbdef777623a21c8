"""PostgreSQL: a ``restore --store`` that fails after it set aside the installation's
off-host anchor file (the folder cannot be put in place) puts that file back, as the
SQLite restore does (``tests/audit/test_restore_failures.py``).

A real node on a real PostgreSQL and its real backup; the rename into place fails for
real: the target folder gets a file while the restore runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from allowhelp.broker.errors import BackupError
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.node import pg_backup, restore
from harness import broker_cli, staffed_broker

SINKS = "audit.sinks.json"


def _fresh_database(pg_url: str) -> str:
    parts = urlsplit(pg_url)
    name = "ah_putback_" + parts.path.strip("/")[-8:]
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def test_a_failed_postgresql_restore_puts_the_anchor_file_back(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    offbox = tmp_path / "offbox"
    offbox.mkdir()
    anchors = offbox / "node.anchors"
    backup = tmp_path / "cluster.tar"
    (tmp_path / "live").mkdir()
    with staffed_broker(
        tmp_path / "live", broker_args=("--audit-anchors", str(anchors)), store=pg_url
    ) as fleet:
        node = fleet.brokers[0]
        done = broker_cli(
            "backup", "--data", str(node.data), "--store", pg_url, "--output", str(backup)
        )
        assert done.returncode == 0, done.stderr
    before = anchors.read_bytes()
    target = tmp_path / "restored"
    target.mkdir(mode=0o700)
    shutil.copy2(node.data / SINKS, target / SINKS)  # the installation's, kept
    place: Callable[[Path, Path], None] = restore._place  # the one pg_backup uses

    def someone_writes_first(scratch: Path, into: Path) -> None:
        (into / "notes.txt").write_text("written while the restore ran\n")
        place(scratch, into)  # the real rename, refused: the folder is not empty

    monkeypatch.setattr(pg_backup, "_place", someone_writes_first)
    store = PostgresUrl.parse(_fresh_database(pg_url))
    with pytest.raises(BackupError, match="is not empty any more"):
        pg_backup.restore_pg_backup(backup, target, store)
    assert anchors.read_bytes() == before  # the old chain's heads, as they were
    assert [p.name for p in offbox.iterdir()] == [anchors.name]
