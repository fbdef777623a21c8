"""The anchor sink after the review of the mid-run checks: a line cut short is never
joined to the next head; a new inode holding the same bytes (sshfs, CIFS) is the
same file; a change found by the command line is chained as ``system:cli``; a lost
file that comes back is told, and a head written ends the lost state.

The real audit log and its real sink on real files; the only fault made up is one
failed ``fsync`` (a disk that cannot sync once), in the last test.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from allowhelp.broker.audit.anchor import RESTARTED, parse_anchors, read_anchors
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.integrity import verify_anchored
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.opening import CLI_ACTOR, AuditSinks, open_with_sinks
from allowhelp.broker.audit.options import AuditOptions

MISSING = "audit.anchors.missing"
CUT_MARK = "# cut short before this line"  # anchor_sink.CUT_MARK


def missing(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT seq, actor, details FROM audit WHERE type = ? ORDER BY seq", (MISSING,)
        ).fetchall()
    finally:
        conn.close()
    return [{"seq": s, "actor": a, "details": json.loads(d)} for s, a, d in rows]


def add(audit: AuditLog, count: int) -> None:
    for n in range(count):
        audit.append("broker.started", actor="system", details={"n": n})


def test_a_line_cut_short_is_not_joined_to_the_next_head(tmp_path: Path) -> None:
    anchors, db = tmp_path / "audit.anchors", tmp_path / "audit.sqlite3"
    audit = AuditLog.open(db, anchors=AnchorSink(anchors, 5))
    try:
        add(audit, 10)  # heads 5 and 10
        text = anchors.read_text()
        with anchors.open("r+") as handle:  # copytruncate at an odd offset: "1" of "10:…" left
            handle.truncate(text.index("\n") + 2)
        add(audit, 5)  # head 15, after the cut
    finally:
        audit.close()
    lines = anchors.read_text().splitlines()
    assert lines[1:3] == ["1", CUT_MARK], lines
    heads = read_anchors(anchors)
    assert [(a.seq, a.why) for a in heads][:2] == [(5, "every"), (15, RESTARTED)]
    result, checked, vouched_from = verify_anchored(db, anchors)
    assert result.ok, result.problem  # no false "the log was truncated" (a head 115)
    assert vouched_from == 15 and checked == len(heads)
    assert [m["details"]["why"] for m in missing(db)] == ["truncated"]
    # A fragment alone is no head: neither a seq nor a cut hash.
    assert parse_anchors(["1\n", "15:abc\n", f"{CUT_MARK}\n"]) == []


def test_a_new_inode_with_the_same_bytes_is_the_same_file(tmp_path: Path) -> None:
    """sshfs without use_ino, CIFS noserverino, an autofs remount: the same file,
    another inode. Only other bytes where the last head was is a change."""
    anchors, db = tmp_path / "audit.anchors", tmp_path / "audit.sqlite3"
    copy = tmp_path / "copy"
    audit = AuditLog.open(db, anchors=AnchorSink(anchors, 1))
    try:
        add(audit, 3)
        before = os.stat(anchors).st_ino
        shutil.copy2(anchors, copy)
        os.replace(copy, anchors)  # the same bytes under another inode
        assert os.stat(anchors).st_ino != before
        add(audit, 2)
        assert missing(db) == []
        assert all(a.why != RESTARTED for a in read_anchors(anchors))
        # Another file of the same size, its last head changed: replaced.
        text = anchors.read_text()
        last = text.rstrip("\n").rsplit("\n", 1)[1]
        forged = text[: len(text) - len(last) - 1] + last.replace(last[-4:], "xxxx") + "\n"
        copy.write_text(forged)
        os.replace(copy, anchors)
        add(audit, 1)
    finally:
        audit.close()
    assert [m["details"]["why"] for m in missing(db)] == ["replaced"]
    assert read_anchors(anchors)[-2].why == RESTARTED


def test_a_change_the_command_line_finds_is_chained_as_system_cli(tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite3"
    sinks = AuditSinks(None, AuditOptions(anchor_every=1))
    opened = open_with_sinks(db, tmp_path, sinks, actor="system")
    opened.audit.append("broker.started", actor="system")
    opened.close()
    cli = open_with_sinks(db, tmp_path, sinks, actor=CLI_ACTOR)  # user add, backup, …
    try:
        (tmp_path / "audit.anchors").unlink()  # gone while the command runs
        cli.audit.append("user.created", actor=CLI_ACTOR, target="someone")
    finally:
        cli.close()
    found = missing(db)
    assert [(m["actor"], m["details"]["why"]) for m in found] == [(CLI_ACTOR, "deleted")]


def test_a_lost_file_that_comes_back_is_told_and_chained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "offbox"
    folder.mkdir()
    anchors, db = folder / "audit.anchors", tmp_path / "audit.sqlite3"
    audit = AuditLog.open(db, anchors=AnchorSink(anchors, 1))
    try:
        add(audit, 2)
        shutil.rmtree(folder)  # the mount gone: the file cannot be made again
        add(audit, 2)
        assert [m["details"]["restarted"] for m in missing(db)] == [False]  # told once
        folder.mkdir()  # back
        caplog.clear()
        add(audit, 1)
        assert "AUDIT ANCHOR FILE" in caplog.text  # told, not silent
    finally:
        audit.close()
    found = missing(db)
    assert [(m["details"]["why"], m["details"]["restarted"]) for m in found] == [
        ("deleted", False),
        ("deleted", True),
    ]
    heads = read_anchors(anchors)
    assert heads[0].why == RESTARTED
    assert verify_anchored(db, anchors)[0].ok


def test_a_head_written_ends_the_lost_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change whose head could not be synced, then heads written as usual: the next
    rotation is told (not hidden by the change told before)."""
    anchors, db = tmp_path / "audit.anchors", tmp_path / "audit.sqlite3"
    audit = AuditLog.open(db, anchors=AnchorSink(anchors, 1))
    real_fsync = os.fsync
    fail = [True]

    def fsync_once(fd: int) -> None:
        if fail and fail.pop():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    try:
        add(audit, 3)
        size = anchors.stat().st_size
        with anchors.open("r+") as handle:
            handle.truncate(size - 1)  # cut short: its last newline gone
        monkeypatch.setattr(os, "fsync", fsync_once)
        add(audit, 1)  # truncated, told; its head not synced
        monkeypatch.setattr(os, "fsync", real_fsync)
        add(audit, 2)  # heads written as usual
        assert [m["details"]["why"] for m in missing(db)] == ["truncated"]
        fresh = tmp_path / "fresh"
        fresh.touch(mode=0o600)
        os.replace(fresh, anchors)  # logrotate's create
        add(audit, 1)
    finally:
        audit.close()
    assert [m["details"]["why"] for m in missing(db)] == ["truncated", "replaced"]
