"""``backup`` and ``restore`` with ``--store`` write their records through the node's
sinks, as the SQLite ones and every other command do: ``broker.backup`` and
``broker.restored`` reach the syslog collector, their heads the anchor file; the
installation's ``audit.sinks.json`` kept in the restore's new folder is kept there.

A real node on a real PostgreSQL, a real UDP collector on 127.0.0.1, the real
``allowhelp-broker`` command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from collectorkit import Collector

from allowhelp.broker.audit.anchor import read_anchors
from harness import broker_cli, exported, staffed_broker, wait_for

SINKS = "audit.sinks.json"


def _at_collector(collector: Collector, type: str) -> list[dict[str, Any]]:
    return [r for r in collector.records() if r["params"]["type"] == type]


def _fresh_database(pg_url: str) -> str:
    parts = urlsplit(pg_url)
    name = "ah_sinks_" + parts.path.strip("/")[-8:]
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def test_a_postgresql_backup_and_restore_write_through_the_nodes_sinks(
    tmp_path: Path, pg_url: str, collector: Collector
) -> None:
    backup = tmp_path / "cluster.tar"
    (tmp_path / "live").mkdir()
    with staffed_broker(
        tmp_path / "live", broker_args=("--syslog", collector.url), store=pg_url
    ) as fleet:
        node = fleet.brokers[0]
        done = broker_cli(
            "backup", "--data", str(node.data), "--store", pg_url, "--output", str(backup)
        )
        assert done.returncode == 0, done.stderr
        wait_for(lambda: _at_collector(collector, "broker.backup"), 10, "broker.backup at syslog")
        record = [r for r in exported("--store", pg_url) if r["type"] == "broker.backup"][-1]
        told = _at_collector(collector, "broker.backup")[0]
        assert told["params"]["seq"] == str(record["seq"]) and told["msgid"] == "AH1906"
        heads = read_anchors(node.data / "audit.anchors")  # the command's stop head
        assert (heads[-1].seq, heads[-1].hash) == (record["seq"], record["hash"])
        sinks = (node.data / SINKS).read_bytes()

    fresh = _fresh_database(pg_url)
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copy2(node.data / SINKS, restored / SINKS)  # the installation's, kept
    done = broker_cli("restore", str(backup), "--data", str(restored), "--store", fresh)
    assert done.returncode == 0, done.stderr
    assert "pg secret" not in done.stdout + done.stderr
    record = exported("--store", fresh)[-1]
    assert record["type"] == "broker.restored" and "anchors_set_aside" not in record["details"]
    assert (
        f"broker.restored sent to syslog; its head anchored in {restored / 'audit.anchors'} "
        "(the installation's audit.sinks.json, kept)"
    ) in done.stdout, done.stdout
    wait_for(lambda: _at_collector(collector, "broker.restored"), 10, "broker.restored at syslog")
    told = _at_collector(collector, "broker.restored")[0]
    assert (told["params"]["seq"], told["msgid"]) == (str(record["seq"]), "AH1907")
    # The restored folder's own anchor file (the backup's) goes on with the new head.
    heads = read_anchors(restored / "audit.anchors")
    assert (heads[-1].seq, heads[-1].hash, heads[-1].why) == (record["seq"], record["hash"], "stop")
    assert (restored / SINKS).read_bytes() == sinks
    done = broker_cli(
        "audit", "verify", "--store", fresh, "--anchors", str(restored / "audit.anchors"),
        "--json",
    )  # fmt: skip
    answer = json.loads(done.stdout)
    assert done.returncode == 0 and answer["ok"] is True, answer
    assert answer["vouched_to"] == record["seq"] and answer["vouched_from"] is None
