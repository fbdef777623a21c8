"""PostgreSQL: an anchor file found changed by the stop anchor is chained before the
audit log closes, as on SQLite (``tests/audit/test_anchors_midrun.py``): the record
``audit.anchors.missing`` first, then its own head as the stop anchor."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from allowhelp.broker.audit.anchor import RESTARTED, read_anchors
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.pg_chain import PgAuditLog
from allowhelp.broker.model.database import PostgresUrl

MISSING = "audit.anchors.missing"


def test_a_change_found_by_the_stop_anchor_is_chained_on_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    anchors = tmp_path / "audit.anchors"
    audit = PgAuditLog.open_url(PostgresUrl.parse(pg_url), anchors=AnchorSink(anchors, 2))
    try:
        for n in range(3):  # head 2 anchored; 3 is left for the stop anchor
            audit.append("broker.started", actor="system", details={"n": n})
        assert [a.seq for a in read_anchors(anchors)] == [2]
        with anchors.open("r+") as handle:
            handle.truncate(0)  # copytruncate, while the broker runs
    finally:
        audit.close()
    with psycopg.connect(pg_url) as conn:
        chain = conn.execute("SELECT seq, type, details, hash FROM audit ORDER BY seq").fetchall()
    assert [row[1] for row in chain] == ["broker.started"] * 3 + [MISSING]
    details = json.loads(chain[-1][2])
    assert details["why"] == "truncated" and details["head"] == f"3:{chain[2][3]}", details
    heads = read_anchors(anchors)
    assert [(a.seq, a.why) for a in heads] == [(3, RESTARTED), (4, "stop")]
    assert heads[1].hash == chain[-1][3]
