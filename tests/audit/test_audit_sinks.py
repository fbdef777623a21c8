"""The command line's records reach syslog and the anchor file, as the broker's do;
an anchor file missing (or empty) while the chain has records is told, chained
(``audit.anchors.missing``) and started again, never silently.

Real brokers, a real UDP collector on 127.0.0.1, the real ``allowhelp-broker``
command line; the anchor file is deleted or emptied for real between starts.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from anchorkit import anchored_broker
from collectorkit import Collector

from allowhelp.broker.audit.anchor import (
    BEGUN,
    RESTARTED,
    parse_anchors,
    read_anchors,
    restarted_at,
)
from allowhelp.broker.audit.chain import read_head
from allowhelp.broker.audit.codes import EVENT_CODES
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    exported,
    wait_for,
)

WARNING_PRI = str(10 * 8 + 4)  # authpriv.warning


def export(data: Path) -> list[dict[str, Any]]:
    return exported("--data", str(data))


def verify_cli(data: Path, *extra: str) -> tuple[int, str, str]:
    done = broker_cli("audit", "verify", "--data", str(data), *extra)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def at_collector(collector: Collector, type: str) -> list[dict[str, Any]]:
    return [r for r in collector.records() if r["params"]["type"] == type]


def top_anchor(path: Path) -> int:
    return max(anchor.seq for anchor in read_anchors(path))


def test_the_command_lines_records_reach_syslog_and_the_anchor_file(
    fleet: Fleet, collector: Collector, tmp_path: Path
) -> None:
    offbox = tmp_path / "offbox"  # another machine's mount, given to serve only
    offbox.mkdir()
    anchors = offbox / "broker.anchors"
    broker = fleet.broker(extra=["--syslog", collector.url, "--audit-anchors", str(anchors)])
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")  # the command line, while serve runs
    wait_for(lambda: at_collector(collector, "user.created"), 10, "user add's record")
    added = at_collector(collector, "user.created")[0]
    seq = int(added["params"]["seq"])
    assert added["msgid"] == EVENT_CODES["user.created"] and added["params"]["target"] == ADMIN
    assert top_anchor(anchors) >= seq  # the CLI's own stop anchor, in serve's anchor file
    assert not (broker.data / "audit.anchors").exists()  # serve's path, not the default
    code, out, _ = verify_cli(broker.data, "--anchors", str(anchors))
    assert code == 0 and out.startswith("audit log intact"), out

    broker.token("--ttl", "10m")
    done = broker_cli("backup", "--data", str(broker.data), "--output", str(tmp_path / "b.tar"))
    assert done.returncode == 0, done.stderr
    for kind in ("token.created", "broker.backup"):
        wait_for(partial(at_collector, collector, kind), 10, f"the record {kind}")
        assert top_anchor(anchors) >= int(at_collector(collector, kind)[0]["params"]["seq"])

    assert broker.stop() == 0
    head, digest = read_head(broker.data / "audit.sqlite3")
    wait_for(
        lambda: any(int(r["params"]["seq"]) == head for r in collector.records()),
        10,
        "the last record at the collector",
    )
    # The collector saw every record, the command line's among them: no gap in seq.
    assert sorted(int(r["params"]["seq"]) for r in collector.records()) == list(range(1, head + 1))
    assert (top_anchor(anchors), read_anchors(anchors)[-1].hash) == (head, digest)
    for source in (anchors, collector.path):
        code, out, _ = verify_cli(broker.data, "--anchors", str(source))
        assert code == 0 and out.startswith(f"audit log intact: {head} records"), out

    # This backup holds no anchor file (serve anchored off the host only): restore chains
    # broker.restored as the first new record and makes no file in its scratch folder;
    # the first start on the restored folder tells it, naming the folder's real path.
    restored = tmp_path / "restored"
    done = broker_cli("restore", str(tmp_path / "b.tar"), "--data", str(restored))
    assert done.returncode == 0, done.stderr
    assert "AUDIT ANCHOR FILE" not in done.stderr and ".restoring-" not in done.stderr
    records = export(restored)
    backed_up = [r for r in records if r["type"] == "broker.backup"][-1]
    assert [r["type"] for r in records if r["seq"] > backed_up["seq"]] == ["broker.restored"]
    assert not any(".restoring-" in json.dumps(r) for r in records)
    assert not (restored / "audit.anchors").exists()
    again = fleet.broker("restored").start()  # the restored folder, as an admin starts it
    assert again.data == restored
    assert again.stop() == 0
    records = export(restored)
    missing = [r for r in records if r["type"] == "audit.anchors.missing"]
    assert [r["target"] for r in missing] == [str(restored / "audit.anchors")]
    assert missing[0]["seq"] > backed_up["seq"] + 1  # after broker.restored, at the start
    assert not any(".restoring-" in json.dumps(r) for r in records)


def test_a_missing_anchor_file_is_told_chained_forwarded_and_started_again(
    fleet: Fleet, collector: Collector
) -> None:
    broker = fleet.broker(extra=["--syslog", collector.url]).start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    assert broker.stop() == 0
    anchors = broker.data / "audit.anchors"
    before = read_head(broker.data / "audit.sqlite3")
    anchors.unlink()  # what someone who rewrote the database would do next

    broker.start()
    log = broker.log.read_text()
    assert f"AUDIT ANCHOR FILE {anchors} is missing while the chain holds {before[0]}" in log
    missing = [r for r in export(broker.data) if r["type"] == "audit.anchors.missing"]
    assert len(missing) == 1
    record = missing[0]
    assert record["code"] == "AH1908" and record["actor"] == "system"
    assert record["target"] == str(anchors) and record["seq"] == before[0] + 1
    assert record["details"] == {"found": "missing", "head": f"{before[0]}:{before[1]}"}
    first = read_anchors(anchors)[0]  # the new file starts with that record's head
    assert (first.seq, first.hash, first.why) == (record["seq"], record["hash"], RESTARTED)
    wait_for(lambda: at_collector(collector, "audit.anchors.missing"), 10, "the record at syslog")
    told = at_collector(collector, "audit.anchors.missing")[0]
    assert told["pri"] == WARNING_PRI and told["params"]["seq"] == str(record["seq"])
    assert broker.stop() == 0

    code, out, err = verify_cli(broker.data, "--anchors", str(anchors))
    assert code == 0 and out.startswith("audit log intact"), out
    assert (
        f"note: {anchors} was begun again at record {record['seq']} (it was missing, empty, "
        f"replaced or cut short: audit.anchors.missing; set aside by a restore: "
        f"broker.restored; or a new node's: audit.anchors.begun); its heads vouch only "
        f"from record {record['seq']} on"
    ) in err
    done = broker_cli(
        "audit", "verify", "--data", str(broker.data), "--anchors", str(anchors), "--json"
    )
    assert json.loads(done.stdout)["vouched_from"] == record["seq"]
    # The collector's file holds the history from record 1: no such caveat there.
    done = broker_cli(
        "audit", "verify", "--data", str(broker.data), "--anchors", str(collector.path), "--json"
    )
    assert json.loads(done.stdout)["vouched_from"] is None

    # The command line tells and chains it too, and an emptied file counts as missing.
    anchors.write_text("")
    done = broker_cli(
        "user", "add", TECH, "--role", "technician", "--password-stdin", "--data",
        str(broker.data), stdin=TECH_PW + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"AUDIT ANCHOR FILE {anchors} is empty (no head in it)" in done.stderr
    again = [r for r in export(broker.data) if r["type"] == "audit.anchors.missing"][-1]
    assert again["actor"] == "system:cli" and again["details"]["found"] == "empty"
    assert read_anchors(anchors)[0].why == RESTARTED
    assert read_anchors(anchors)[-1].seq == again["seq"] + 1  # user.created, at its stop

    broker.start()  # the file is there now: no new record
    assert broker.stop() == 0
    assert len([r for r in export(broker.data) if r["type"] == "audit.anchors.missing"]) == 2


def test_an_anchor_file_deleted_while_serve_runs_is_made_again_marked_restarted(
    fleet: Fleet, collector: Collector
) -> None:
    broker, anchors, head = anchored_broker(fleet, collector)
    anchors.unlink()  # while serve runs
    Desk.login(broker, ADMIN, ADMIN_PW).close()
    wait_for(anchors.exists, 10, "the anchor file made again")
    assert broker.stop() == 0
    heads = read_anchors(anchors)
    assert heads[0].why == RESTARTED and heads[0].line == 1 and heads[0].seq > head
    log = broker.log.read_text()
    assert f"AUDIT ANCHOR FILE {anchors} went away while the broker ran" in log
    wait_for(
        lambda: any(a["params"].get("why") == RESTARTED for a in collector.anchors()),
        10,
        "the restarted head at syslog",
    )
    told = [a for a in collector.anchors() if a["params"].get("why") == RESTARTED]
    assert told[0]["pri"] == WARNING_PRI and told[0]["params"]["seq"] == str(heads[0].seq)
    done = broker_cli(
        "audit", "verify", "--data", str(broker.data), "--anchors", str(anchors), "--json"
    )
    answer = json.loads(done.stdout)
    assert answer["ok"] is True and answer["vouched_from"] == heads[0].seq

    # Chained after the batch whose head found it gone (tests/audit/test_anchors_midrun.py).
    missing = [r for r in export(broker.data) if r["type"] == "audit.anchors.missing"]
    assert [(r["details"]["why"], r["target"]) for r in missing] == [("deleted", str(anchors))]
    broker.start()  # the file holds heads: no new record at the start
    assert broker.stop() == 0
    assert _fresh_types(broker).count("audit.anchors.missing") == 1
    assert read_anchors(anchors)[0] == heads[0]


def test_an_empty_anchor_file_on_a_fresh_chain_is_begun(fleet: Fleet) -> None:
    broker = fleet.broker()
    broker.data.mkdir(parents=True)
    anchors = broker.data / "audit.anchors"
    anchors.touch(mode=0o600)  # an admin made it first, to set its owner
    broker.start()
    broker.kill()  # before any head
    assert anchors.read_text().startswith(BEGUN) and read_anchors(anchors) == []
    broker.start()
    assert broker.stop() == 0
    assert "audit.anchors.missing" not in _fresh_types(broker)
    assert "AUDIT ANCHOR FILE" not in broker.log.read_text()
    assert restarted_at(read_anchors(anchors)) is None


def _fresh_types(broker: Broker) -> list[str]:
    return [r["type"] for r in export(broker.data)]


def test_a_fresh_install_starts_quietly(fleet: Fleet) -> None:
    cli_first = fleet.broker("cli-first")
    cli_first.add_user(ADMIN, ADMIN_PW, role="admin")  # before any serve: an empty chain
    assert read_anchors(cli_first.data / "audit.anchors")[-1].seq == 1
    cli_first.start()
    assert cli_first.stop() == 0
    serve_first = fleet.broker("serve-first").start()
    serve_first.kill()  # before any head: the file holds only its first line
    begun = (serve_first.data / "audit.anchors").read_text()
    assert begun.startswith(BEGUN) and read_anchors(serve_first.data / "audit.anchors") == []
    serve_first.start()
    assert serve_first.stop() == 0
    for broker in (cli_first, serve_first):
        assert (broker.data / "audit.anchors").read_text().startswith(BEGUN)
        assert "audit.anchors.missing" not in _fresh_types(broker)
        assert "AUDIT ANCHOR FILE" not in broker.log.read_text()
        assert restarted_at(read_anchors(broker.data / "audit.anchors")) is None


def test_the_why_of_a_head_is_read_from_either_kind_of_file() -> None:
    digest = "cd" * 32
    lines = [
        f"5:{digest} 2026-12-01T12:00:00.000000Z {RESTARTED}",
        f"9:{digest} 2026-12-01T12:00:00.000000Z stop",
        f"11:{digest}",
        f'<85>1 ts h allowhelp - AH1905 [allowhelp@32473 seq="12" hash="{digest}" '
        f'why="every"] {{}}',
    ]
    found = parse_anchors(lines)
    assert [(a.seq, a.why) for a in found] == [(5, RESTARTED), (9, "stop"), (11, ""), (12, "every")]
    assert restarted_at(found) == 5
    assert restarted_at(found[1:]) is None and restarted_at([]) is None
