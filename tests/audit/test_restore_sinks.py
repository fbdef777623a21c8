"""``restore`` writes ``broker.restored`` through the installation's sinks: the
``audit.sinks.json`` kept in the new folder (read before anything is unpacked, kept
after), so the record reaches the syslog collector and its head the anchor file, as
every other command's. An anchor file kept off the folder holds the old chain's heads,
some past the backup's head: it is set aside whole and begun again at the restore,
``restarted``, so neither it nor a broker started with it reports a legitimate restore
as tampering. A restore without the file (a test restore elsewhere) touches neither.

A real broker, a real UDP collector on 127.0.0.1, the real ``allowhelp-broker``
command line.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from collectorkit import Collector

from allowhelp.broker.audit.anchor import RESTARTED, read_anchors
from allowhelp.broker.audit.chain import read_head
from harness import ADMIN, ADMIN_PW, Fleet, broker_cli, exported, wait_for

SINKS = "audit.sinks.json"


def export(data: Path) -> list[dict[str, Any]]:
    return exported("--data", str(data))


def verify_json(data: Path, anchors: Path) -> dict[str, Any]:
    done = broker_cli("audit", "verify", "--data", str(data), "--anchors", str(anchors), "--json")
    answer: dict[str, Any] = json.loads(done.stdout)
    assert (done.returncode == 0) == answer["ok"], done.stderr
    return answer


def at_collector(collector: Collector, type: str) -> list[dict[str, Any]]:
    return [r for r in collector.records() if r["params"]["type"] == type]


def test_a_restore_goes_through_the_installations_sinks_and_keeps_them(
    fleet: Fleet, collector: Collector, tmp_path: Path
) -> None:
    offbox = tmp_path / "offbox"  # another machine's mount
    offbox.mkdir()
    anchors = offbox / "broker.anchors"
    broker = fleet.broker(
        extra=["--syslog", collector.url, "--audit-anchors", str(anchors)]
    )  # fmt: skip
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    backup = tmp_path / "b.tar"
    done = broker_cli("backup", "--data", str(broker.data), "--output", str(backup))
    assert done.returncode == 0, done.stderr
    broker.token("--ttl", "10m")  # the old chain goes on after the backup
    assert broker.stop() == 0
    old_head = read_head(broker.data / "audit.sqlite3")
    old_anchors = anchors.read_bytes()
    assert read_anchors(anchors)[-1].seq == old_head[0]  # past the backup's head
    sinks = (broker.data / SINKS).read_bytes()
    assert str(anchors) in sinks.decode() and collector.url in sinks.decode()

    # A test restore elsewhere, with no audit.sinks.json: the installation's collector
    # and anchor file get nothing of it.
    elsewhere = tmp_path / "test-restore"
    done = broker_cli("restore", str(backup), "--data", str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert "(no audit.sinks.json in the folder: no syslog)" in done.stdout, done.stdout
    time.sleep(0.5)  # the command flushed its forwarder (if any) before it exited
    assert not at_collector(collector, "broker.restored")
    assert anchors.read_bytes() == old_anchors and not (elsewhere / SINKS).exists()

    # In place: the old folder moved aside whole, its audit.sinks.json kept in the new one.
    old = tmp_path / "old"
    broker.data.rename(old)
    broker.data.mkdir(mode=0o700)
    shutil.copy2(old / SINKS, broker.data / SINKS)
    done = broker_cli("restore", str(backup), "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    records = export(broker.data)
    restored = records[-1]
    assert restored["type"] == "broker.restored"
    aside = Path(restored["details"]["anchors_set_aside"])
    assert aside.parent == offbox and aside.name.startswith("broker.anchors.before-restore-")
    assert (
        f"broker.restored sent to syslog; its head anchored in {anchors} "
        "(the installation's audit.sinks.json, kept)"
    ) in done.stdout, done.stdout
    assert f"kept in {aside}; the anchor file begins again at record {restored['seq']}" in (
        done.stderr
    )
    assert (broker.data / SINKS).read_bytes() == sinks  # kept, not dropped nor replaced
    assert (broker.data / SINKS).stat().st_mode & 0o777 == 0o600

    # The collector has the record, and its head as a restarted anchor (a warning).
    wait_for(lambda: at_collector(collector, "broker.restored"), 10, "broker.restored at syslog")
    told = at_collector(collector, "broker.restored")
    assert [int(r["params"]["seq"]) for r in told] == [restored["seq"]]
    wait_for(
        lambda: any(a["params"].get("why") == RESTARTED for a in collector.anchors()),
        10,
        "the restarted head at syslog",
    )
    head = [a for a in collector.anchors() if a["params"].get("why") == RESTARTED][-1]
    assert (head["params"]["seq"], head["params"]["hash"]) == (
        str(restored["seq"]),
        restored["hash"],
    )

    # The old heads kept whole; the anchor file begun again at broker.restored.
    assert aside.read_bytes() == old_anchors
    heads = read_anchors(anchors)
    assert [(a.seq, a.hash, a.why) for a in heads] == [
        (restored["seq"], restored["hash"], RESTARTED)
    ]
    answer = verify_json(broker.data, anchors)  # no false alarm for the restore
    assert answer["ok"] is True and answer["vouched_from"] == restored["seq"], answer
    assert verify_json(old, aside)["ok"] is True  # the old chain against its own heads
    assert verify_json(broker.data, aside)["ok"] is False  # what a file left in place said

    # A broker started on the restored folder, with the same flags, finds nothing wrong.
    broker.start()
    assert broker.stop() == 0
    log = broker.log.read_text()
    assert "AUDIT CHAIN BROKEN" not in log and "AUDIT ANCHOR FILE" not in log
    types = [r["type"] for r in export(broker.data) if r["seq"] > restored["seq"]]
    assert "audit.anchors.missing" not in types and "audit.chain_broken" not in types
    answer = verify_json(broker.data, anchors)
    assert answer["ok"] is True and answer["vouched_from"] == restored["seq"], answer
    assert answer["last_seq"] == read_anchors(anchors)[-1].seq  # serve's stop head too


def test_a_target_with_more_than_the_sinks_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "new"
    target.mkdir()
    (target / SINKS).write_text('{"syslog": null, "anchors": null}\n')
    (target / "ca.key").write_text("x")
    backup = tmp_path / "none.tar"
    backup.write_bytes(b"")
    done = broker_cli("restore", str(backup), "--data", str(target))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"{target} is not empty: restore into a new folder" in errors[0]
    (target / SINKS).write_text("{not json")  # damaged: refused before anything is unpacked
    (target / "ca.key").unlink()
    done = broker_cli("restore", str(backup), "--data", str(target))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"{target / SINKS} is damaged" in errors[0], errors[0]
    assert sorted(p.name for p in target.iterdir()) == [SINKS]
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]
