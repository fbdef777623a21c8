"""An anchor file replaced (logrotate ``create``), truncated (``copytruncate``) or
deleted while the chain is open: the next head goes on marked ``restarted``, the
change is chained as ``audit.anchors.missing`` (``why``) and sent to syslog at
warning, and ``vouched_from`` is said by the API, ``audit verify`` and the start-up
check.

Real brokers, a real UDP collector on 127.0.0.1, the real command line; the anchor
file is replaced or truncated for real while ``serve`` runs. The AuditLog tests run
the real log with its real writer thread, its commit refused by a real lock held by
another connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from anchorkit import anchored_broker
from collectorkit import Collector

from allowhelp.broker.audit.anchor import (
    RESTARTED,
    parse_anchors,
    read_anchors,
    restarted_at,
)
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.chain import AuditRecord, read_records
from allowhelp.broker.audit.log import AuditLog
from harness import ADMIN, ADMIN_PW, Broker, Desk, Fleet, broker_cli, exported, wait_for

WARNING_PRI = str(10 * 8 + 4)  # authpriv.warning
MISSING = "audit.anchors.missing"


def missing_records(data: Path) -> list[dict[str, Any]]:
    return [r for r in exported("--data", str(data)) if r["type"] == MISSING]


def verify_json(data: Path, anchors: Path) -> dict[str, Any]:
    done = broker_cli("audit", "verify", "--data", str(data), "--anchors", str(anchors), "--json")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def api_verify(broker: Broker) -> dict[str, Any]:
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        answer: dict[str, Any] = admin.client.get("/api/v1/audit/verify").json()
    finally:
        admin.close()
    return answer


def check_told(
    broker: Broker, collector: Collector, anchors: Path, why: str, said: str
) -> dict[str, Any]:
    """After a change and a login: the record chained, said, and at syslog; returned."""
    wait_for(lambda: missing_records(broker.data), 30, f"the {MISSING} record")
    found = missing_records(broker.data)
    assert len(found) == 1
    record = found[0]
    restarted = [a for a in read_anchors(anchors) if a.why == RESTARTED]
    assert len(restarted) == 1
    head = restarted[0]
    assert record["code"] == "AH1908" and record["actor"] == "system"
    assert record["target"] == str(anchors) and record["seq"] > head.seq
    assert record["details"] == {
        "why": why,
        "head": f"{head.seq}:{head.hash}",
        "restarted": True,
    }
    assert f"AUDIT ANCHOR FILE {anchors} {said} while the broker ran" in broker.log.read_text()
    wait_for(
        lambda: [r for r in collector.records() if r["params"]["type"] == MISSING],
        30,
        "the record at syslog",
    )
    told = next(r for r in collector.records() if r["params"]["type"] == MISSING)
    assert told["pri"] == WARNING_PRI and told["params"]["seq"] == str(record["seq"])
    wait_for(
        lambda: any(a["params"].get("why") == RESTARTED for a in collector.anchors()),
        30,
        "the restarted head at syslog",
    )
    marked = [a for a in collector.anchors() if a["params"].get("why") == RESTARTED]
    assert marked[0]["pri"] == WARNING_PRI and marked[0]["params"]["seq"] == str(head.seq)
    return record


def test_an_anchor_file_replaced_while_serve_runs_is_chained_and_goes_on_restarted(
    fleet: Fleet, collector: Collector
) -> None:
    broker, anchors, _ = anchored_broker(fleet, collector)
    rotated = anchors.with_name("audit.anchors.1")
    fresh = anchors.with_name("audit.anchors.new")
    os.link(anchors, rotated)  # logrotate's create: the old file kept aside,
    fresh.touch(mode=0o600)
    os.replace(fresh, anchors)  # a new, empty file (a new inode) in its place
    Desk.login(broker, ADMIN, ADMIN_PW).close()  # more records, anchored by serve

    record = check_told(broker, collector, anchors, "replaced", "was replaced by another file")
    heads = read_anchors(anchors)
    assert heads[0].why == RESTARTED and heads[0].line == 1
    answer = api_verify(broker)
    assert answer["ok"] is True and answer["vouched_from"] == heads[0].seq
    assert answer["anchors_checked"] >= 2
    assert broker.stop() == 0
    assert read_anchors(anchors)[-1].seq >= record["seq"]  # the record itself is anchored
    assert verify_json(broker.data, anchors)["vouched_from"] == heads[0].seq
    assert verify_json(broker.data, collector.path)["vouched_from"] is None

    broker.start()  # the file holds heads: told at start, no new record
    assert (
        f"vouched_from {heads[0].seq}: {anchors} was made again (or went on) at record "
        f"{heads[0].seq} marked restarted"
    ) in broker.log.read_text()
    assert broker.stop() == 0
    assert len(missing_records(broker.data)) == 1


def test_an_anchor_file_truncated_while_serve_runs_is_chained_and_goes_on_restarted(
    fleet: Fleet, collector: Collector
) -> None:
    broker, anchors, _ = anchored_broker(fleet, collector)
    with anchors.open("r+") as handle:  # logrotate's copytruncate: same inode, emptied
        handle.truncate(0)
    Desk.login(broker, ADMIN, ADMIN_PW).close()

    check_told(broker, collector, anchors, "truncated", "was truncated (shorter than written)")
    heads = read_anchors(anchors)
    assert heads[0].why == RESTARTED and heads[0].line == 1
    answer = api_verify(broker)
    assert answer["ok"] is True and answer["vouched_from"] == heads[0].seq

    # Cut short, not emptied (its last line cut off): the heads before stay, the file
    # goes on marked restarted after them, and it vouches only from there on.
    lines = anchors.read_text().splitlines(keepends=True)
    with anchors.open("r+") as handle:
        handle.truncate(sum(len(line) for line in lines[:-1]))
    Desk.login(broker, ADMIN, ADMIN_PW).close()
    wait_for(lambda: len(missing_records(broker.data)) == 2, 30, "a second record")
    second = missing_records(broker.data)[1]
    marked = [a for a in read_anchors(anchors) if a.why == RESTARTED]
    assert second["details"]["why"] == "truncated" and len(marked) == 2
    assert second["details"]["head"] == f"{marked[1].seq}:{marked[1].hash}"
    assert marked[1].line == len(lines)  # in the place of the line cut off
    assert api_verify(broker)["vouched_from"] == marked[1].seq
    assert broker.stop() == 0
    answer = verify_json(broker.data, anchors)
    assert answer["ok"] is True and answer["vouched_from"] == marked[1].seq


class _HoldLock:
    """An observer that, once armed, takes the audit file's write lock on a
    connection of its own: the next commit of the log is refused, for real."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.armed = False
        self.holder: sqlite3.Connection | None = None
        self.refusals = 0

    def committed(self, records: Sequence[AuditRecord]) -> None:
        if self.armed and self.holder is None:
            self.holder = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.holder.execute("BEGIN IMMEDIATE")

    def refused(self, count: int) -> None:
        self.refusals += count

    def release(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()


def test_a_change_whose_record_cannot_be_written_is_logged_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anchors = tmp_path / "audit.anchors"
    db = tmp_path / "audit.sqlite3"
    log = AuditLog.open(db, busy_timeout=0.2, anchors=AnchorSink(anchors, 1))
    hold = _HoldLock(db)
    log.observe(hold)

    async def records(n: int) -> None:
        for i in range(n):
            await log.write("broker.started", actor="system", details={"n": i})

    try:
        asyncio.run(records(2))  # through the writer thread
        wait_for(lambda: [a.seq for a in read_anchors(anchors)] == [1, 2], 30, "head 2")
        fresh = tmp_path / "new.anchors"
        fresh.touch(mode=0o600)
        os.replace(fresh, anchors)
        hold.armed = True
        with caplog.at_level(logging.ERROR):
            asyncio.run(records(1))  # committed; its head finds the file replaced
            wait_for(lambda: hold.refusals, 30, "the record's commit refused")
    finally:
        hold.release()
        log.close()
    assert [r.type for r in list(read_records(db))] == ["broker.started"] * 3
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        m.startswith(f"AUDIT RECORD {MISSING} NOT WRITTEN for the anchor file {anchors} "
                     "(replaced at head 3): audit log unavailable")
        for m in said
    ), said  # fmt: skip
    assert any(f"AUDIT ANCHOR FILE {anchors} was replaced by another file" in m for m in said)
    assert read_anchors(anchors)[0].why == RESTARTED


def test_a_change_found_by_the_stop_anchor_is_chained_before_the_log_closes(
    tmp_path: Path,
) -> None:
    anchors = tmp_path / "audit.anchors"
    db = tmp_path / "audit.sqlite3"
    log = AuditLog.open(db, anchors=AnchorSink(anchors, 2))

    async def records() -> None:
        for i in range(3):
            await log.write("broker.started", actor="system", details={"n": i})

    try:
        asyncio.run(records())  # head 2 anchored; 3 is left for the stop anchor
        wait_for(lambda: anchors.exists() and read_anchors(anchors), 30, "head 2")
        assert [a.seq for a in read_anchors(anchors)] == [2]
        with anchors.open("r+") as handle:
            handle.truncate(0)
    finally:
        log.close()
    chain = list(read_records(db))
    assert [r.type for r in chain] == ["broker.started"] * 3 + [MISSING]
    assert chain[-1].details == {
        "why": "truncated",
        "head": f"3:{chain[2].hash}",
        "restarted": True,
    }
    heads = read_anchors(anchors)
    assert [(a.seq, a.why) for a in heads] == [(3, RESTARTED), (4, "stop")]
    assert heads[1].hash == chain[-1].hash


def test_vouched_from_counts_a_restarted_head_anywhere_in_an_anchor_file_only() -> None:
    digest = "ab" * 32
    file_lines = [
        f"3:{digest} 2026-12-01T12:00:00.000000Z every",
        f"9:{digest} 2026-12-01T12:00:00.000000Z {RESTARTED}",
        f"10:{digest} 2026-12-01T12:00:00.000000Z every",
    ]
    assert restarted_at(parse_anchors(file_lines)) == 9  # a file cut short, gone on
    collector_lines = [
        f'<85>1 ts h allowhelp - AH1905 [allowhelp@32473 seq="{seq}" hash="{digest}" '
        f'why="{why}"] {{}}'
        for seq, why in ((3, "every"), (9, RESTARTED), (10, "every"))
    ]
    assert restarted_at(parse_anchors(collector_lines)) is None  # it kept its history
    assert restarted_at(parse_anchors(collector_lines[1:])) == 9
