"""The audit log on real SQLite files: chain, tamper evidence, fail-closed, kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest

from allowhelp.broker.audit.chain import find_records
from allowhelp.broker.audit.log import (
    EVENT_CODES,
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    record_hash,
    verify,
)
from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable

REPO = Path(__file__).resolve().parents[2]
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
REQUIRED_TYPES = [
    "auth.login.ok",
    "auth.login.failed",
    "auth.login.throttled",
    "auth.logout",
    "auth.totp.enrolled",
    "auth.totp.reset",
    "user.created",
    "user.updated",
    "user.disabled",
    "user.role_changed",
    "token.created",
    "token.used",
    "token.refused",
    "agent.enrolled",
    "agent.connected",
    "agent.disconnected",
    "agent.refused",
    "agent.removed",
    "session.requested",
    "consent.asked",
    "consent.granted",
    "consent.denied",
    "consent.expired",
    "session.started",
    "session.ended",
    "session.failed",
    "help.requested",
    "broker.started",
    "broker.stopped",
    "request.refused",
]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


def fill(path: Path, n: int) -> list[AuditRecord]:
    log = AuditLog.open(path)
    try:
        return [
            log.append("consent.granted", actor="user:bob@pc12", target=f"s{i}", details={"i": i})
            for i in range(1, n + 1)
        ]
    finally:
        log.close()


def tamper(path: Path, *statements: str) -> None:
    """What an attacker with the file would do: drop the triggers, then edit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_chain_happy_path(path: Path) -> None:
    log = AuditLog.open(path)
    assert log.head() == (0, GENESIS_HASH)
    first = log.append("broker.started", actor="system")
    second = log.append(
        "consent.granted",
        actor="user:bob@pc12",
        target="session-1",
        details={"kind": "shell", "phrase": "blue kettle", "tuple": (1, 2), "é": "ü"},
    )
    third = log.append("session.started", actor="technician:alice", target="session-1")
    assert [r.seq for r in (first, second, third)] == [1, 2, 3]
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash and third.prev_hash == second.hash
    assert second.code == EVENT_CODES["consent.granted"]
    assert TS_RE.fullmatch(second.ts)
    assert second.details == {"kind": "shell", "phrase": "blue kettle", "tuple": [1, 2], "é": "ü"}
    # The hash is the documented canonical JSON, reproducible without this code.
    fields = {k: v for k, v in second.to_json().items() if k != "hash"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == second.hash == record_hash(fields)
    assert log.head() == (3, third.hash)
    assert log._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: fsync each commit
    assert log.records() == [first, second, third]
    assert log.records(after=1, limit=1) == [second]
    assert set(second.to_json()) == {
        *("seq", "ts", "type", "code", "actor", "target", "details", "prev_hash", "hash")
    }
    log.close()
    result = verify(path)
    assert (result.ok, result.count, result.last_seq, result.first_bad_seq, result.problem) == (
        True,
        3,
        3,
        None,
        "",
    )
    assert result.last_hash == third.hash
    # Reopening continues the same chain.
    log = AuditLog.open(path)
    assert log.append("broker.stopped", actor="system").prev_hash == third.hash
    log.close()
    assert verify(path).count == 4


def test_event_codes_are_registered_unique_and_unknown_types_refused(path: Path) -> None:
    assert set(REQUIRED_TYPES) <= set(EVENT_CODES)
    assert len(set(EVENT_CODES.values())) == len(EVENT_CODES)
    assert all(re.fullmatch(r"AH\d{4}", code) for code in EVENT_CODES.values())
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", t) for t in EVENT_CODES)
    log = AuditLog.open(path)
    with pytest.raises(ValueError, match=r"unknown audit event type 'consent\.maybe'"):
        log.append("consent.maybe", actor="system")
    with pytest.raises(TypeError, match="JSON"):
        log.append("broker.started", actor="system", details={"when": object()})
    assert log.head() == (0, GENESIS_HASH)
    log.close()


def test_audit_file_is_owner_only(path: Path) -> None:
    fill(path, 1)
    assert path.stat().st_mode & 0o777 == 0o600


async def test_write_from_many_tasks_gives_one_gapless_chain(path: Path) -> None:
    log = AuditLog.open(path)
    records = await asyncio.gather(
        *(log.write("token.used", actor=f"agent:a{i}", details={"i": i}) for i in range(300))
    )
    assert sorted(r.seq for r in records) == list(range(1, 301))
    assert sorted(r.details["i"] for r in records) == list(range(300))  # type: ignore[type-var]
    log.close()
    result = verify(path)
    assert result.ok and result.count == 300
    with pytest.raises(AuditUnavailable, match="closed"):
        await log.write("token.used", actor="system")


def test_two_logs_on_one_file_share_one_chain(path: Path) -> None:
    """Two writers (as two processes would) must not both take the same seq."""
    logs = [AuditLog.open(path), AuditLog.open(path)]

    def burst(log: AuditLog) -> None:
        for i in range(100):
            log.append("agent.connected", actor="system", details={"i": i})

    threads = [threading.Thread(target=burst, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for log in logs:
        log.close()
    result = verify(path)
    assert result.ok, result.problem
    assert result.count == 200


def test_edited_record_is_named(path: Path) -> None:
    fill(path, 8)
    tamper(path, "UPDATE audit SET actor = 'technician:mallory' WHERE seq = 5")
    result = verify(path)
    assert not result.ok
    assert result.first_bad_seq == 5
    assert result.problem == "record 5 was edited (hash mismatch)"
    assert (result.count, result.last_seq) == (4, 4)


def test_edit_with_recomputed_hash_breaks_the_next_link(path: Path) -> None:
    records = fill(path, 6)
    edited = {k: v for k, v in records[2].to_json().items() if k != "hash"}
    edited["target"] = "someone-else"
    new_hash = record_hash(edited)
    tamper(path, f"UPDATE audit SET target = 'someone-else', hash = '{new_hash}' WHERE seq = 3")
    result = verify(path)
    assert result.first_bad_seq == 4
    assert result.problem == "record 4 is out of order / its prev_hash does not match record 3"


def test_a_row_added_outside_the_chain_is_found(path: Path) -> None:
    """No walk from record 1 meets a row numbered 0 or less, and no trigger stops
    an INSERT: such a row (here a forged end record with a recording digest) fails
    the verification and is never found as a session's record."""
    fill(path, 3)
    tamper(
        path,
        "INSERT INTO audit (seq, ts, type, code, actor, target, details, prev_hash, hash)"
        " VALUES (-1, '2026-01-01T00:00:00Z', 'session.ended', 'AH1407', 'system', 's9',"
        " '{\"recording_sha256\":\"00\"}', 'x', 'y')",
    )
    result = verify(path)
    assert not result.ok and result.first_bad_seq == -1
    assert result.problem == "a record numbered -1 was added outside the chain (records start at 1)"
    assert find_records(path, "session.ended", "s9") == []
    assert not verify(path, upto=-1).ok


def test_details_are_checked_as_stored_not_as_read_back(path: Path) -> None:
    """A key written twice in a record's details: JSON keeps the last, which is what
    was hashed, while someone reading the table sees the first. Refused."""
    fill(path, 3)
    tamper(path, """UPDATE audit SET details = '{"i":7,"i":2}' WHERE seq = 2""")
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 2
    assert result.problem == "record 2 was edited (details are not as the log writes them)"


async def test_a_record_that_is_not_utf8_fails_alone(path: Path) -> None:
    """A lone surrogate (a command-line argument that was not UTF-8) is refused on
    its caller's side: the other records of the same batch are written, and the log
    takes the next one (no transaction left holding the lock)."""
    log = AuditLog.open(path)
    try:
        with pytest.raises(TypeError):
            log.append("user.created", actor="system", target="\udcff")
        with pytest.raises(TypeError):
            log.append("user.created", actor="system", details={"name": "\udcff"})
        writes = [log.write("consent.granted", actor="system", target=f"s{i}") for i in range(5)]
        bad = log.write("user.created", actor="\ud800", target="x")
        done = await asyncio.gather(*writes, bad, return_exceptions=True)
        assert [type(d).__name__ for d in done] == ["AuditRecord"] * 5 + ["TypeError"]
        assert log.append("broker.stopped", actor="system").seq == 6
    finally:
        log.close()
    assert verify(path).ok


def test_deleted_middle_record_is_named_missing(path: Path) -> None:
    fill(path, 8)
    tamper(path, "DELETE FROM audit WHERE seq = 4")
    result = verify(path)
    assert result.first_bad_seq == 4
    assert result.problem == "record 4 is missing (sequence jumps from 3 to 5)"


def test_swapped_records_are_detected(path: Path) -> None:
    fill(path, 6)
    cols = "ts, type, code, actor, target, details, prev_hash, hash"
    tamper(
        path,
        f"CREATE TEMP TABLE t AS SELECT seq, {cols} FROM audit WHERE seq IN (3, 4)",
        *(
            f"UPDATE audit SET {c} = (SELECT {c} FROM t WHERE t.seq = 7 - audit.seq) "
            "WHERE seq IN (3, 4)"
            for c in cols.split(", ")
        ),
    )
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT target FROM audit WHERE seq = 3").fetchone() == ("s4",)
    conn.close()
    result = verify(path)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "record 3" in result.problem


def test_truncated_tail_needs_a_saved_head(path: Path) -> None:
    records = fill(path, 10)
    saved = (records[-1].seq, records[-1].hash)
    tamper(path, "DELETE FROM audit WHERE seq > 7")
    plain = verify(path)
    assert plain.ok and plain.count == 7  # a chain cut short is still a valid chain
    result = verify(path, head=saved)
    assert not result.ok
    assert result.problem == "the log was truncated: head 10 not present"
    assert result.first_bad_seq == 8
    # A rewritten tail (cut, then new records appended) is caught too.
    fill(path, 3)
    result = verify(path, head=saved)
    assert result.problem == "record 10's hash differs from the saved head"
    assert result.first_bad_seq == 10
    assert verify(path, head=(7, records[6].hash)).ok


def test_triggers_refuse_update_and_delete(path: Path) -> None:
    fill(path, 3)
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="audit records are append-only"):
        conn.execute("UPDATE audit SET actor = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="audit records are append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 3")
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert verify(path).count == 3


def test_verify_never_modifies_the_file(path: Path) -> None:
    fill(path, 5)
    before = path.read_bytes()
    assert verify(path).ok
    assert path.read_bytes() == before


def test_not_an_audit_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database, just some text long enough to have a header\n" * 20)
    with pytest.raises(AuditCorrupt, match="not an SQLite database"):
        verify(text)
    with pytest.raises(AuditCorrupt, match="not an SQLite database"):
        AuditLog.open(text)
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(AuditCorrupt, match="schema version 0"):
        verify(other)
    with pytest.raises(AuditCorrupt, match="schema version 0"):
        AuditLog.open(other)
    future = tmp_path / "future.sqlite3"
    fill(future, 1)
    conn = sqlite3.connect(future)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(AuditCorrupt, match="version 7"):
        AuditLog.open(future)
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "missing.sqlite3")


def test_full_database_fails_closed_then_recovers(path: Path) -> None:
    log = AuditLog.open(path)
    kept = [log.append("token.created", actor="admin:root", details={"i": i}) for i in range(3)]
    pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
    log._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the database is full
    big = {"blob": "x" * 20_000}
    with pytest.raises(AuditUnavailable, match="full; the action was refused") as info:
        for _ in range(10):
            log.append("session.requested", actor="technician:alice", details=big)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert str(info.value).startswith("audit log unavailable: ")
    head = log.head()
    assert verify(path).ok
    log._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    after = log.append("session.requested", actor="technician:alice", details=big)
    assert (after.seq, after.prev_hash) == (head[0] + 1, head[1])
    log.close()
    result = verify(path)
    assert result.ok and result.count == head[0] + 1 and head[0] >= len(kept)


def test_read_only_file_fails_closed_then_recovers(path: Path) -> None:
    fill(path, 2)
    # Root ignores chmod, so open the file the way SQLite does when the process
    # may not write it: it falls back to read-only and every write fails with
    # SQLITE_READONLY, exactly the user's case. (The next test does a real chmod.)
    log = AuditLog.open(path, _read_only=True)
    with pytest.raises(AuditUnavailable, match="read-only; the action was refused"):
        log.append("consent.granted", actor="user:bob@pc12")
    assert not log._conn.in_transaction  # no half transaction left holding locks
    assert log.head()[0] == 2
    log.close()
    log = AuditLog.open(path)  # the cause removed: writable again
    assert log.append("consent.granted", actor="user:bob@pc12").seq == 3
    log.close()
    assert verify(path).count == 3


CHILD = """
import sys
from pathlib import Path
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AuditUnavailable
try:
    log = AuditLog.open(Path(sys.argv[1]))
    print("appended", log.append("consent.granted", actor="user:bob@pc12").seq)
    log.close()
except AuditUnavailable as exc:
    print("refused:", exc)
"""


def _without_root_powers() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod cannot stop root")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_chmod_read_only_file_fails_closed_for_a_real_process(path: Path) -> None:
    """chmod 0400 as a user sees it; root's CAP_DAC_OVERRIDE is dropped with setpriv."""
    fill(path, 2)
    prefix = _without_root_powers()
    path.chmod(0o400)
    run = [*prefix, sys.executable, "-c", CHILD, str(path)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == (
        "refused: audit log unavailable: the audit file is read-only; the action was refused"
    )
    for p in path.parent.glob("audit.sqlite3*"):
        p.chmod(0o600)
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "appended 3"
    assert verify(path).count == 3


def test_locked_database_fails_closed_then_recovers(path: Path) -> None:
    fill(path, 1)
    log = AuditLog.open(path, busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(AuditUnavailable, match=r"locked by another process for over 0\.2 s"):
        log.append("auth.login.ok", actor="technician:alice")
    other.execute("ROLLBACK")
    other.close()
    assert log.append("auth.login.ok", actor="technician:alice").seq == 2
    log.close()
    assert verify(path).ok
    with pytest.raises(AuditUnavailable, match="closed"):
        log.append("auth.login.ok", actor="technician:alice")


class RecordingForwarder:
    """Checks, at submit time, that the record is already committed on disk."""

    def __init__(self, path: Path, fail: bool = False) -> None:
        self.path, self.fail, self.seen = path, fail, list[tuple[int, bool]]()

    def submit(self, record: AuditRecord) -> None:
        conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)
        row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (record.seq,)).fetchone()
        conn.close()
        self.seen.append((record.seq, row == (record.hash,)))
        if self.fail:
            raise OSError("collector exploded")


@pytest.mark.parametrize("fail", [False, True])
def test_forwarder_gets_records_after_commit_and_cannot_break_append(
    path: Path, fail: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    forwarder = RecordingForwarder(path, fail=fail)
    log = AuditLog.open(path, forwarder=forwarder)  # type: ignore[arg-type]
    for i in range(3):
        log.append("help.requested", actor="user:bob@pc12", details={"secret": f"pw{i}"})
    log.close()
    assert forwarder.seen == [(1, True), (2, True), (3, True)]
    assert verify(path).count == 3
    assert "help.requested" in caplog.text  # logging happened...
    assert "pw1" not in caplog.text  # ...without the details
    assert ("collector exploded" in caplog.text) == fail


def test_kill_9_mid_burst_loses_no_audit_record(tmp_path: Path) -> None:
    audit, actions = tmp_path / "audit.sqlite3", tmp_path / "actions.sqlite3"
    script = Path(__file__).parents[1] / "kit" / "audit_burst.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(audit), str(actions), "20000", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        progress = 0
        while progress < 400:
            line = proc.stdout.readline()
            assert line, f"burst ended early: {proc.stderr.read()}"
            progress = int(line)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL  # killed mid-burst, not finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    result = verify(audit)
    assert result.ok, result.problem
    conn = sqlite3.connect(actions)
    done = {i for (i,) in conn.execute("SELECT i FROM actions")}
    conn.close()
    log = AuditLog.open(audit)
    audited = [cast(int, r.details["action"]) for r in log.records()]
    log.close()
    assert len(done) >= 400
    assert done <= set(audited), "an action took effect without its audit record"
    # At most the one record whose action had not happened yet when killed.
    assert set(audited) - done <= {max(done) + 1}
    assert audited == sorted(audited)
    assert verify(audit).ok  # reopening after the crash kept the chain valid
