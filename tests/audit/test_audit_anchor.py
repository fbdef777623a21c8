"""Head anchors: the head (SEQ:HASH) copied every N records and at stop to a file
outside the database and to syslog, and `audit verify --anchors` against them.

What the chain alone cannot catch (a rewrite with recomputed hashes, a cut-off
tail) is caught here, as long as the anchors were kept where the rewriter could
not write. Faults are injected for real with sqlite3 on a stopped broker's file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from collectorkit import Collector

from allowhelp.broker.audit.anchor import parse_anchors, read_anchors
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.chain import (
    GENESIS_HASH,
    HASHED,
    SELECT_SQL,
    read_head,
    record_hash,
)
from allowhelp.broker.audit.codes import ANCHOR_MSGID, EVENT_CODES
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.syslog import SyslogForwarder
from harness import ADMIN, ADMIN_PW, Desk, Fleet, broker_cli, wait_for


def verify_cli(data: Path, *extra: str) -> tuple[int, str]:
    done = broker_cli("audit", "verify", "--data", str(data), *extra)
    return done.returncode, (done.stdout + done.stderr).strip()


def rewrite(db: Path, seq: int, actor: str) -> None:
    """A full rewrite, as someone who knows the (public) hash would do it: edit
    record ``seq`` and recompute every hash after it, so the chain holds."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER audit_no_update")
        before = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()
        prev = before[0] if before else GENESIS_HASH
        rows = conn.execute(f"{SELECT_SQL} WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
        for row in rows:
            fields: dict[str, Any] = dict(zip((*HASHED, "hash"), row, strict=True))
            fields["details"] = json.loads(fields["details"])
            if fields["seq"] == seq:
                fields["actor"] = actor
            fields["prev_hash"] = prev
            prev = record_hash(fields)
            conn.execute(
                "UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (fields["actor"], fields["prev_hash"], prev, fields["seq"]),
            )
    finally:
        conn.close()


def test_heads_go_to_the_file_and_syslog_every_n_records_and_at_close(
    tmp_path: Path, collector: Collector
) -> None:
    fwd = SyslogForwarder.from_url(collector.url)
    anchors = tmp_path / "elsewhere.anchors"
    log = AuditLog.open(
        tmp_path / "audit.sqlite3", forwarder=fwd, anchors=AnchorSink(anchors, 5, fwd)
    )
    records = [log.append("auth.login.ok", actor=f"technician:t{i}") for i in range(12)]
    log.close()
    fwd.close()
    lines = anchors.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        f"{r.seq}:{r.hash}" for r in (records[4], records[9], records[11])
    ]
    assert [line.split()[2] for line in lines] == ["every", "every", "stop"]
    assert anchors.stat().st_mode & 0o777 == 0o600
    wait_for(lambda: len(collector.anchors()) == 3, 10, "three anchor lines at the collector")
    first = collector.anchors()[0]
    assert first["msgid"] == "AH1905" and first["pri"] == str(10 * 8 + 5)
    assert first["params"] == {"seq": "5", "hash": records[4].hash, "why": "every"}
    assert json.loads(str(first["msg"])) == {"head": f"5:{records[4].hash}", "why": "every"}
    # Either copy verifies: the anchor file, or the collector's own file.
    for source in (anchors, collector.path):
        code, out = verify_cli(tmp_path, "--anchors", str(source))
        assert (code, out) == (
            0,
            f"audit log intact: 12 records, head 12:{records[11].hash}; 3 anchored head(s) match",
        ), source


def test_the_new_codes_are_registered_and_the_anchor_msgid_is_taken() -> None:
    assert EVENT_CODES["agent.flapping"] == "AH1306"
    assert EVENT_CODES["tunnel.refused"] == "AH1307"
    assert EVENT_CODES["audit.chain_broken"] == "AH1904"
    assert ANCHOR_MSGID == "AH1905" and ANCHOR_MSGID not in EVENT_CODES.values()


def test_only_real_anchor_lines_count(tmp_path: Path) -> None:
    digest = "ab" * 32
    text = [
        f"7:{digest} 2026-12-01T12:00:00.000000Z stop",  # the broker's anchor file
        f'<85>1 2026-12-01T12:00:00Z h allowhelp - AH1905 [allowhelp@32473 seq="9" hash="{digest}"'
        ' why="every"] {}',  # a collector's line
        f'<85>1 2026-12-01T12:00:00Z h allowhelp - AH1401 [allowhelp@32473 seq="3" type="x"] '
        f'{{"reason":"8:{digest}"}}',  # a technician's words in a record: not a head
        f'<85>1 ts h allowhelp - AH1402 [allowhelp@32473 actor="AH1905 [allowhelp@32473 seq=\\"4\\"'
        f' hash=\\"{digest}\\""] {{}}',  # an escaped forgery in a value: not a head
        "garbage",
    ]
    assert [(a.seq, a.line) for a in parse_anchors(text)] == [(7, 1), (9, 2)]
    path = tmp_path / "empty.anchors"
    path.write_text("nothing here\n")
    (tmp_path / "data").mkdir()
    AuditLog.open(tmp_path / "data" / "audit.sqlite3").close()
    code, out = verify_cli(tmp_path / "data", "--anchors", str(path))
    assert code == 2 and "no anchored heads" in out


def test_an_anchor_file_that_cannot_be_written_never_refuses_a_record(tmp_path: Path) -> None:
    sink = AnchorSink(tmp_path / "no such folder" / "audit.anchors", 2)
    log = AuditLog.open(tmp_path / "audit.sqlite3", anchors=sink)
    for i in range(5):
        log.append("auth.login.ok", actor=f"technician:t{i}")
    log.close()
    assert sink.state.failures == 3 and "No such file" in sink.state.last_error
    assert sink.state.last_seq is None


def test_a_rewrite_with_recomputed_hashes_is_caught_only_by_the_anchors(fleet: Fleet) -> None:
    offbox = fleet.root / "offbox"  # stands for another machine's mount
    offbox.mkdir()
    anchors = offbox / "broker.anchors"
    broker = fleet.broker(extra=["--audit-anchors", str(anchors), "--audit-anchor-every", "3"])
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    for _ in range(4):
        Desk.login(broker, ADMIN, ADMIN_PW).close()
    assert broker.stop() == 0
    assert not (broker.data / "audit.anchors").exists()  # the flag's path only
    heads = read_anchors(anchors)
    assert len(heads) >= 3 and (heads[-1].seq, heads[-1].hash) == read_head(
        broker.data / "audit.sqlite3"
    )
    assert verify_cli(broker.data, "--anchors", str(anchors))[0] == 0
    rewrite(broker.data / "audit.sqlite3", 2, "admin:nobody")
    # The honest limit: the chain itself still holds after a full rewrite...
    code, out = verify_cli(broker.data)
    assert code == 0 and out.startswith("audit log intact")
    # ...only a head kept elsewhere shows it.
    code, out = verify_cli(broker.data, "--anchors", str(anchors))
    first = heads[0]
    assert code == 1
    assert first.line == 2  # after the line the file was begun with, on an empty chain
    assert f"NOT intact: record {first.seq} differs from its head anchored on line 2" in out
    assert "the records after 0 were rewritten or replaced" in out
    broker.start()  # the start-up check compares the anchors too
    assert f"AUDIT CHAIN BROKEN at record 1: record {first.seq} differs" in broker.log.read_text()
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        status = admin.client.get("/api/v1/audit/verify").json()
    finally:
        admin.close()
    assert status["ok"] is False and status["started_broken"] is True
    assert status["anchors_checked"] == 1 and status["first_bad_seq"] == 1  # stops at the first


def test_a_cut_off_tail_is_caught_by_the_syslog_copy(fleet: Fleet, collector: Collector) -> None:
    broker = fleet.broker(extra=["--syslog", collector.url, "--audit-anchor-every", "2"]).start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    for _ in range(3):
        Desk.login(broker, ADMIN, ADMIN_PW).close()
    assert broker.stop() == 0
    code, out = verify_cli(broker.data)
    head = int(out.split("head ")[1].split(":")[0])
    wait_for(
        lambda: any(a["params"]["seq"] == str(head) for a in collector.anchors()),
        10,
        "the stop anchor at the collector",
    )
    assert verify_cli(broker.data, "--anchors", str(collector.path))[0] == 0
    conn = sqlite3.connect(broker.data / "audit.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq > ?", (head - 2,))
    conn.close()
    assert verify_cli(broker.data)[0] == 0  # a shorter chain is still a chain
    code, out = verify_cli(broker.data, "--anchors", str(collector.path))
    assert code == 1
    assert f"the log was truncated: head {head - 1} anchored on line" in out or (
        f"the log was truncated: head {head} anchored on line" in out
    )
