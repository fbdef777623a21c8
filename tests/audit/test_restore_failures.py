"""A restore that fails after it set aside the installation's off-host anchor file
puts that file back ("nothing restored" holds for it too); one whose kept
``audit.sinks.json`` names an anchor file of another chain is refused before
anything is chained or renamed; and a head that could not be written to the anchor
file is not said to be anchored there.

A real broker and its real backup, the real ``allowhelp-broker`` command line. The
failures are real where they can be: the target folder gets a file while the
restore runs (someone else writing into it), so the real rename into place fails.
A full disk under the anchor file cannot be made for root here: the sink's write is
made to fail, once, in the in-process restore.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from collectorkit import Collector

from allowhelp.broker.audit.anchor import read_anchors
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.cli import backup as cli_backup
from allowhelp.broker.errors import BackupError
from allowhelp.broker.node import restore
from harness import ADMIN, ADMIN_PW, Fleet, broker_cli

SINKS = "audit.sinks.json"


@dataclass(frozen=True)
class Installation:
    backup: Path
    anchors: Path  # off the folder, the old chain's heads past the backup's head
    target: Path  # empty but for the installation's audit.sinks.json


def installation(
    fleet: Fleet, tmp_path: Path, extra: tuple[str, ...] = (), *, offhost: bool = True
) -> Installation:
    """``offhost`` False: the data folder's own anchor file, named in the kept
    audit.sinks.json by its path (the old folder, restoring next to it)."""
    offbox = tmp_path / "offbox"
    offbox.mkdir()
    anchors = offbox / "broker.anchors"
    flags = ["--audit-anchors", str(anchors)] if offhost else []
    broker = fleet.broker(extra=[*flags, *extra])
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    backup = tmp_path / "b.tar"
    done = broker_cli("backup", "--data", str(broker.data), "--output", str(backup))
    assert done.returncode == 0, done.stderr
    broker.token("--ttl", "10m")  # the old chain goes on after the backup
    assert broker.stop() == 0
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    shutil.copy2(broker.data / SINKS, target / SINKS)
    if not offhost:
        anchors = broker.data / "audit.anchors"
        sinks = json.loads((target / SINKS).read_text())
        sinks["anchors"]["path"] = str(anchors)
        (target / SINKS).write_text(json.dumps(sinks))
    return Installation(backup, anchors, target)


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(
        p.name
        for p in [*tmp_path.iterdir(), *(tmp_path / "offbox").iterdir()]
        if ".restoring-" in p.name or ".before-restore-" in p.name
    )


def test_a_restore_that_fails_at_the_end_puts_the_anchor_file_back(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = installation(fleet, tmp_path)
    before = setup.anchors.read_bytes()
    place: Callable[[Path, Path], None] = restore._place

    def someone_writes_first(scratch: Path, target: Path) -> None:
        (target / "notes.txt").write_text("written while the restore ran\n")
        place(scratch, target)  # the real rename, refused: the folder is not empty

    monkeypatch.setattr(restore, "_place", someone_writes_first)
    with pytest.raises(BackupError, match="is not empty any more"):
        restore.restore_backup(setup.backup, setup.target)
    assert setup.anchors.read_bytes() == before  # the old chain's heads, as they were
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in setup.target.iterdir()) == [SINKS, "notes.txt"]


def test_an_anchor_file_of_another_chain_is_not_set_aside(fleet: Fleet, tmp_path: Path) -> None:
    setup = installation(fleet, tmp_path)
    other = setup.anchors.with_name("other.anchors")  # another broker's, say
    first = read_anchors(setup.anchors)[0]
    other.write_text(f"{first.seq}:{'0' * 64} 2026-01-01T00:00:00Z every\n")
    sinks = setup.target / SINKS
    sinks.write_text(sinks.read_text().replace(str(setup.anchors), str(other)))
    before = other.read_bytes()
    done = broker_cli("restore", str(setup.backup), "--data", str(setup.target))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"nothing restored: the anchor file {other}" in errors[0], errors[0]
    assert "holds heads of another chain than this backup's" in errors[0]
    assert other.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in setup.target.iterdir()) == [SINKS]


def test_a_head_not_written_is_not_said_to_be_anchored(
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = installation(fleet, tmp_path)
    write = AnchorSink._write

    def disk_full(sink: AnchorSink, fd: int, line: str) -> str:
        if sink.path == setup.anchors:
            os.close(fd)
            return "No space left on device"
        return write(sink, fd, line)

    monkeypatch.setattr(AnchorSink, "_write", disk_full)
    result = restore.restore_backup(setup.backup, setup.target)
    cli_backup._said_sinks(result)
    out = capsys.readouterr()
    assert "its head anchored in" not in out.out, out.out
    assert (
        f"warning: broker.restored's head could not be written to the anchor file "
        f"{setup.anchors} (No space left on device)"
    ) in out.err
    assert result.anchor_file == setup.anchors


def test_an_anchor_file_that_cannot_be_set_aside_is_found_before_anything_is_chained(
    fleet: Fleet, collector: Collector, tmp_path: Path
) -> None:
    """Its folder takes no new name (immutable, as a read-only mount would be): refused
    before broker.restored is chained, so the collector gets no record of a restore
    that did not happen."""
    setup = installation(fleet, tmp_path, extra=("--syslog", collector.url))
    before = setup.anchors.read_bytes()
    offbox = setup.anchors.parent
    if subprocess.run(["chattr", "+i", str(offbox)], check=False).returncode != 0:
        pytest.skip("chattr +i is not allowed here")
    try:
        done = broker_cli("restore", str(setup.backup), "--data", str(setup.target))
    finally:
        subprocess.run(["chattr", "-i", str(offbox)], check=True)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    time.sleep(0.5)  # the command flushed its forwarder (if any) before it exited
    assert not [r for r in collector.records() if r["params"]["type"] == "broker.restored"]
    assert (
        f"nothing restored: the anchor file {setup.anchors} cannot be set aside in its folder"
    ) in errors[0], errors[0]
    assert setup.anchors.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_the_old_folders_own_anchor_file_is_not_set_aside(fleet: Fleet, tmp_path: Path) -> None:
    setup = installation(fleet, tmp_path, offhost=False)
    before = setup.anchors.read_bytes()
    done = broker_cli("restore", str(setup.backup), "--data", str(setup.target))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert (
        f"nothing restored: the anchor file {setup.anchors} named in audit.sinks.json is in "
        f"the broker data folder {setup.anchors.parent}"
    ) in errors[0], errors[0]
    assert setup.anchors.read_bytes() == before
    assert not [p for p in setup.anchors.parent.iterdir() if ".before-restore-" in p.name]
    assert sorted(p.name for p in setup.target.iterdir()) == [SINKS]


def test_a_postgresql_nodes_folder_is_a_data_folder_too(fleet: Fleet, tmp_path: Path) -> None:
    """A node's folder on a shared store holds no audit.sqlite3, but its node.id says
    what it is: its anchor file is that node's own, never set aside."""
    setup = installation(fleet, tmp_path)
    node = tmp_path / "node-folder"
    node.mkdir()
    (node / "node.id").write_text("0" * 32 + "\n")
    anchors = node / "audit.anchors"
    shutil.copy2(setup.anchors, anchors)  # the same chain's heads: only the folder tells
    sinks = setup.target / SINKS
    sinks.write_text(sinks.read_text().replace(str(setup.anchors), str(anchors)))
    before = anchors.read_bytes()
    done = broker_cli("restore", str(setup.backup), "--data", str(setup.target))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"is in the broker data folder {node}" in errors[0], errors[0]
    assert anchors.read_bytes() == before
    assert sorted(p.name for p in node.iterdir()) == ["audit.anchors", "node.id"]


def test_a_folder_that_cannot_be_synced_still_has_its_file_set_aside(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some mounts refuse to sync a folder (FUSE, some network file systems): the
    rename is done all the same, and said as done (its old heads set aside, the file
    begun again), not "could not be set aside" with the heads under another name."""
    setup = installation(fleet, tmp_path)
    before = setup.anchors.read_bytes()
    fsync = os.fsync

    def no_folder_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.path.samefile(
            f"/proc/self/fd/{fd}", setup.anchors.parent
        ):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    result = restore.restore_backup(setup.backup, setup.target)
    aside = [p for p in setup.anchors.parent.iterdir() if ".before-restore-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert result.anchor_file == setup.anchors
    assert read_anchors(setup.anchors)[0].why == "restarted"
