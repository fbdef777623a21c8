"""Retention deletes a recording only once its session's end record is in the chain
and the keep has passed since that end, on real files and a real chain (SQLite,
and PostgreSQL shared by two nodes and one recordings folder).

Until the twelfth wave a recording went once its file was older than the keep
and this process was not writing it: a session whose end was still being
written, one running on another node, or one whose end was owed after a crash
lost its recording to a keep of seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.pg_chain import PgAuditLog
from allowhelp.broker.audit.retention import session_ends, sweep
from allowhelp.broker.errors import AuditCorrupt
from allowhelp.broker.model.database import PostgresUrl

DAY = 86400.0
LONG_AGO = time.time() - 100 * DAY


@pytest.fixture(params=["sqlite", "postgresql"])
def audit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    if request.param == "sqlite":
        opened = AuditLog.open(tmp_path / "audit.sqlite3")
    else:
        opened = PgAuditLog.open_url(PostgresUrl.parse(request.getfixturevalue("pg_url")))
    try:
        yield opened
    finally:
        opened.close()


def recording(folder: Path, name: str, written: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * 10)
    os.utime(path, (written, written))
    return path


def end(audit: AuditLog, session_id: str) -> None:
    audit.append("session.ended", actor="system", target=session_id, details={"end_reason": "x"})


async def test_a_recording_waits_for_its_end_record_and_the_keep_after_it(
    tmp_path: Path, audit: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    # a screen still running (a still screen writes nothing), maybe on another node
    running = recording(folder, "running.rfb", LONG_AGO)
    # a shell stopped at its cap long ago, its session ended just now
    capped = recording(folder, "capped.cast", LONG_AGO)
    end(audit, "capped")
    caplog.set_level(logging.INFO, "allowhelp.broker.audit.retention")

    assert await sweep(folder, DAY, audit) == 0  # past the keep by their files alone
    assert running.exists() and capped.exists()
    assert "1 recording(s) older than 1.00 days kept: their session has no end" in caplog.text

    later = time.time() + DAY + 60  # the keep has passed since the end
    rewritten = recording(folder, "rewritten.rfb", later - 60)  # ended, then written again
    end(audit, "rewritten")
    assert await sweep(folder, DAY, audit, now=later) == 1
    assert not capped.exists() and running.exists() and rewritten.exists()
    expired = [r for r in audit.records() if r.type == "recording.expired"]
    ended = session_ends(audit.path, ["capped"])["capped"]
    assert [r.target for r in expired] == ["capped"]
    assert expired[0].details["session_ended"] == ended.ts and ended.seq < expired[0].seq
    assert expired[0].details["ended_seq"] == ended.seq

    end(audit, "running")  # its session ends at last: the keep counts from now
    assert await sweep(folder, DAY, audit, now=time.time() + DAY - 60) == 0
    assert running.exists()
    assert await sweep(folder, DAY, audit, now=time.time() + DAY + 60) == 1
    assert not running.exists() and rewritten.exists()


async def test_a_keep_of_seconds_never_takes_an_unended_sessions_recording(
    tmp_path: Path, audit: AuditLog
) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    owed = recording(folder, "owed.rfb", time.time() - 5)  # its end owed after a crash
    assert await sweep(folder, 1.0, audit) == 0
    assert owed.exists()
    end(audit, "owed")  # written at the next start
    time.sleep(1.1)
    assert await sweep(folder, 1.0, audit) == 1
    assert not owed.exists()


async def test_a_node_keeps_what_another_node_records_until_that_node_ends_it(
    tmp_path: Path, pg_url: str
) -> None:
    """Two nodes, one chain (PostgreSQL), one recordings folder: node B's sweep
    leaves node A's running session's recording alone, and takes it after A's end."""
    url = PostgresUrl.parse(pg_url)
    node_a, node_b = PgAuditLog.open_url(url), PgAuditLog.open_url(url)
    folder = tmp_path / "shared-recordings"
    folder.mkdir()
    try:
        on_a = recording(folder, "on-a.cast", LONG_AGO)
        assert await sweep(folder, 60.0, node_b) == 0
        assert on_a.exists()
        end(node_a, "on-a")
        assert await sweep(folder, 60.0, node_b, now=time.time() + 120) == 1
        assert not on_a.exists()
        expired = [r for r in node_a.records() if r.type == "recording.expired"]
        assert [r.target for r in expired] == ["on-a"]
    finally:
        node_a.close()
        node_b.close()


async def test_many_recordings_are_looked_up_in_a_few_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from allowhelp.broker.audit import retention

    monkeypatch.setattr(retention, "LOOKUP", 4)
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    folder = tmp_path / "recordings"
    folder.mkdir()
    try:
        for n in range(10):
            recording(folder, f"s{n}.rfb", LONG_AGO)
            if n % 2 == 0:
                end(audit, f"s{n}")
        ends = session_ends(audit.path, [f"s{n}" for n in range(10)])
        assert sorted(ends) == ["s0", "s2", "s4", "s6", "s8"]
        assert await sweep(folder, DAY, audit, now=time.time() + 2 * DAY) == 5
        assert sorted(p.name for p in folder.iterdir()) == [f"s{n}.rfb" for n in (1, 3, 5, 7, 9)]
    finally:
        audit.close()


async def test_a_chain_that_cannot_be_read_keeps_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    old = recording(folder, "old.rfb", LONG_AGO)
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    end(audit, "old")
    audit.close()
    (tmp_path / "audit.sqlite3").write_bytes(b"not a database, not a chain" * 100)
    with pytest.raises(AuditCorrupt):
        await sweep(folder, DAY, audit, now=time.time() + 2 * DAY)
    assert old.exists()
