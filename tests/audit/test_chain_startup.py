"""The broker checks its own chain at start: a broken one is shouted, recorded and
shown (or refuses the start with --refuse-broken-audit); a replay is "verified"
only while the chain holds up to the record with the recording's digest.

Faults are injected for real: the broker is stopped, its SQLite file edited
with sqlite3 behind its back, and the broker started again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import websockets

from allowhelp.broker.audit import integrity
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.entry import make_entry
from allowhelp.broker.audit.integrity import ChainWatch, check_digest_record, startup_check
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.options import AuditOptions
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    exported,
    running_fleet,
    wait_for,
)
from terminalkit import Terminal, consented_shell


def export(data: Path) -> list[dict[str, Any]]:
    return exported("--data", str(data))


def edit(db: Path, sql: str) -> None:
    """What someone with the file does: drop the guard, edit, leave the hashes."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute(sql)
    finally:
        conn.close()


def stopped_broker(fleet: Fleet, *extra: str) -> Broker:
    broker = fleet.broker(extra=list(extra)).start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    assert broker.stop() == 0
    return broker


def test_a_broker_started_on_an_edited_chain_shouts_records_and_shows_it(fleet: Fleet) -> None:
    broker = stopped_broker(fleet)
    edit(broker.data / "audit.sqlite3", "UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    broker.start()  # shouting, not refusing, is the default
    log = broker.log.read_text()
    assert "CRITICAL" in log and "AUDIT CHAIN BROKEN at record 2: record 2 was edited" in log
    records = export(broker.data)
    broken = [r for r in records if r["type"] == "audit.chain_broken"]
    assert len(broken) == 1 and broken[0]["code"] == "AH1904"
    assert broken[0]["details"]["first_bad_seq"] == 2
    assert broken[0]["details"]["found_by"] == "startup"
    started = [r["seq"] for r in records if r["type"] == "broker.started"]
    assert 2 < broken[0]["seq"] < started[-1]  # chained on after the break, before serving
    admin = Desk.login(broker, ADMIN, ADMIN_PW)  # still serving
    try:
        status = admin.client.get("/api/v1/audit/verify").json()
    finally:
        admin.close()
    assert status["ok"] is False and status["first_bad_seq"] == 2
    assert status["started_broken"] is True
    assert status["startup"]["first_bad_seq"] == 2 and status["startup"]["scope"] == "full"
    assert status["startup"]["record_seq"] == broken[0]["seq"]
    assert status["broken"]["problem"] == "record 2 was edited (hash mismatch)"
    assert status["anchoring"]["file"] == str(broker.data / "audit.anchors")


def test_refuse_broken_audit_refuses_to_start(fleet: Fleet) -> None:
    broker = stopped_broker(fleet)
    edit(broker.data / "audit.sqlite3", "UPDATE audit SET details = '{}' WHERE seq = 1")
    broker.extra = ["--refuse-broken-audit"]
    with pytest.raises(AssertionError, match="broker exited with 2"):
        broker.start()
    log = broker.log.read_text()
    assert "refusing to start (--refuse-broken-audit): the audit chain is broken at record 1" in log
    assert "Traceback" not in log
    types = [r["type"] for r in export(broker.data)]
    assert types[-2:] == ["broker.stopped", "audit.chain_broken"]  # not started


def _filled(path: Path, n: int, anchor_file: Path, every: int, batch: int = 500) -> None:
    """n records, committed ``batch`` at a time (one fsync each, as a busy broker's
    group commit does), heads anchored as the broker anchors them."""
    audit = AuditLog.open(path, anchors=AnchorSink(anchor_file, every))
    for k in range(0, n, batch):
        entries = [
            make_entry("session.started", f"technician:t{i}", f"s{i}", {"i": i})
            for i in range(k, min(n, k + batch))
        ]
        with audit._lock:
            audit._forward(audit._commit(entries))
    audit.close()  # anchors the head at stop


def test_a_long_chain_is_checked_from_its_last_anchor(tmp_path: Path) -> None:
    path, anchors = tmp_path / "audit.sqlite3", tmp_path / "audit.anchors"
    _filled(path, 100_000, anchors, every=100)
    tail, _ = startup_check(path, anchors, full=False)
    whole, _ = startup_check(path, anchors, full=True)
    print(
        f"start-up check of 100,000 records: {tail.seconds:.3f} s (from the last anchor), "
        f"{whole.seconds:.3f} s (full walk)"
    )
    assert tail.ok and whole.ok and whole.scope == "full" and whole.last_seq == 100_000
    # 100,000 is still walked in full before serving; one more record and only
    # the tail after the last matching anchor is.
    assert tail.scope == "full"
    audit = AuditLog.open(path, anchors=AnchorSink(anchors, 100))
    audit.append("broker.started", actor="system")
    audit.close()
    tail, _ = startup_check(path, anchors, full=False)
    assert tail.scope == "tail" and tail.from_seq == 100_001 and tail.ok
    assert tail.anchors_checked == 201 and tail.seconds < whole.seconds / 4


async def test_after_a_tail_check_the_full_check_finds_an_old_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integrity, "SYNC_FULL_MAX", 10)
    path, anchors = tmp_path / "audit.sqlite3", tmp_path / "audit.anchors"
    _filled(path, 60, anchors, every=10, batch=10)
    edit(path, "UPDATE audit SET target = 'other' WHERE seq = 5")  # no anchor can see this
    audit = AuditLog.open(path, anchors=AnchorSink(anchors, 10))
    watch = ChainWatch(audit, AuditOptions(anchors=anchors), tmp_path)
    try:
        check = await watch.start()
        assert check.ok and check.scope == "tail" and check.from_seq == 60
        for _ in range(600):  # a child process walks it all; wait for its verdict
            if audit.integrity.full_state != "running":
                break
            await asyncio.sleep(0.05)
        full = audit.integrity.full
        assert audit.integrity.full_state == "done" and full is not None
        assert not full.ok and full.first_bad_seq == 5 and full.anchors_checked == 6
        assert audit.integrity.broken == full and full.record_seq == 61
        record = audit.records(after=60)[0]
        assert record.type == "audit.chain_broken"
        assert record.details["found_by"] == "full check"
    finally:
        await watch.close()
        audit.close()


def test_a_digest_record_after_the_break_is_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    audit = AuditLog.open(path)
    for i in range(5):
        audit.append("session.started", actor="technician:alice", target=f"s{i}")
    audit.append("session.ended", actor="system", target="s4", details={"recording_sha256": "ab"})
    audit.append("session.replayed", actor="admin:root", target="s4")
    audit.close()
    assert check_digest_record(path, None, "s4").ok
    edit(path, "UPDATE audit SET actor = 'x' WHERE seq = 7")  # after the digest: still fine
    held = check_digest_record(path, None, "s4")
    assert held.ok and held.seq == 6 and held.digest == "ab"
    edit(path, "UPDATE audit SET actor = 'x' WHERE seq = 3")
    held = check_digest_record(path, None, "s4")
    assert not held.ok and "broken at record 3, at or before record 6" in held.problem
    assert check_digest_record(path, None, "nope").problem.startswith("no audit record")


async def test_replay_is_refused_once_the_chain_breaks_before_its_digest(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as (_, broker, agent):
        desk = Desk.login(broker, TECH, TECH_PW)
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with websockets.connect(
            desk.ws_url(session_id) + "?cols=80&rows=24",
            ssl=broker.ssl_context(),
            origin=broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            term = Terminal(ws)
            await term.send("echo kept-$((6*7)); exit\n")
            await term.expect(b"kept-42", timeout=30)
        await asyncio.to_thread(desk.wait_state, session_id, "ended")
        desk.close()

        def digest_record() -> dict[str, Any] | None:
            return next(
                (
                    r
                    for r in export(broker.data)
                    if r["type"] == "session.ended" and r["target"] == session_id
                ),
                None,
            )

        ended = await asyncio.to_thread(wait_for, digest_record, 20, "the session.ended record")
        assert ended["details"]["recording_sha256"]
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        replay = f"/api/v1/sessions/{session_id}/recording"
        assert admin.client.get(replay).status_code == 200
        admin.close()
        assert broker.stop() == 0
        edit(broker.data / "audit.sqlite3", "UPDATE audit SET actor = 'mallory' WHERE seq = 3")
        broker.start()
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        try:
            refused = admin.client.get(replay)
        finally:
            admin.close()
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "recording_unverified"
        assert f"at or before record {ended['seq']}" in refused.json()["message"]
        replays = [r for r in export(broker.data) if r["type"] == "session.replayed"]
        assert len(replays) == 1
