"""``allowhelp-broker audit ...`` through argparse and as a real process."""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import GENESIS_HASH, AuditLog, AuditRecord
from allowhelp.broker.cli.audit import add_audit_commands

REPO = Path(__file__).resolve().parents[2]
ERROR_PREFIX = "allowhelp-broker: error: "


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def fill(data: Path, n: int) -> list[AuditRecord]:
    log = AuditLog.open(data / "audit.sqlite3")
    records = [
        log.append("session.started", actor="technician:alice", target=f"s{i}", details={"i": i})
        for i in range(n)
    ]
    records.append(log.append("help.requested", actor="user:zoë@pc12", details={"m": "é\n"}))
    log.close()
    return records


def run(argv: list[str], default: Path) -> int:
    parser = argparse.ArgumentParser(prog="allowhelp-broker")
    sub = parser.add_subparsers(dest="command", required=True)
    add_audit_commands(sub, lambda: default)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def one_line(text: str) -> str:
    assert text.count("\n") == 1, text
    return text.rstrip("\n")


def test_verify_intact(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last = fill(data, 4)[-1]
    assert run(["audit", "verify", "--data", str(data)], tmp_path) == 0
    out, err = capsys.readouterr()
    assert one_line(out) == f"audit log intact: 5 records, head 5:{last.hash}"
    assert "cut off the end cannot be seen without --head" in err  # said, not implied
    head = ["--head", f"5:{last.hash}"]
    assert run(["audit", "verify", "--data", str(data), *head], tmp_path) == 0
    assert capsys.readouterr().err == ""  # all of it vouched for
    assert run(["audit", "verify", "--data", str(data), "--json", *head], tmp_path) == 0
    assert json.loads(capsys.readouterr().out)["vouched_to"] == 5
    # --data falls back to data_default(), read when the command runs.
    assert run(["audit", "verify"], data) == 0
    assert "intact: 5 records" in capsys.readouterr().out


def test_verify_tampered_names_the_record(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(data, 4)
    conn = sqlite3.connect(data / "audit.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'technician:mallory' WHERE seq = 3")
    conn.close()
    assert run(["audit", "verify", "--data", str(data)], tmp_path) == 1
    out, err = capsys.readouterr()
    assert one_line(out) == "audit log NOT intact: record 3 was edited (hash mismatch)"
    assert "up to seq 2" in err


def test_verify_with_head_catches_truncation(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(data, 4)
    assert run(["audit", "head", "--data", str(data)], tmp_path) == 0
    saved = one_line(capsys.readouterr().out)
    assert run(["audit", "verify", "--data", str(data), "--head", saved], tmp_path) == 0
    capsys.readouterr()
    conn = sqlite3.connect(data / "audit.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq >= 4")
    conn.close()
    assert run(["audit", "verify", "--data", str(data)], tmp_path) == 0
    capsys.readouterr()
    assert run(["audit", "verify", "--data", str(data), "--head", saved], tmp_path) == 1
    out = one_line(capsys.readouterr().out)
    assert out == "audit log NOT intact: the log was truncated: head 5 not present"


@pytest.mark.parametrize("head", ["5", "x:y", "5:abc", "-1:" + "0" * 64])
def test_verify_bad_head_is_a_usage_error(
    data: Path, tmp_path: Path, head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(data, 1)
    assert run(["audit", "verify", "--data", str(data), f"--head={head}"], tmp_path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith(ERROR_PREFIX + "--head must look like SEQ:HASH")


@pytest.mark.parametrize("command", ["verify", "head", "export"])
def test_missing_log_exits_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["audit", command, "--data", str(tmp_path / "nope")], tmp_path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    expected = f"no audit log at {tmp_path / 'nope' / 'audit.sqlite3'}"
    assert one_line(err).startswith(ERROR_PREFIX + expected)
    assert not (tmp_path / "nope").exists()  # reading never creates anything


def test_not_a_database(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data / "audit.sqlite3").write_bytes(b"garbage, not SQLite " * 100)
    assert run(["audit", "verify", "--data", str(data)], tmp_path) == 1
    assert "is not an SQLite database" in one_line(capsys.readouterr().out)
    assert run(["audit", "head", "--data", str(data)], tmp_path) == 1
    assert one_line(capsys.readouterr().err).startswith(ERROR_PREFIX)


def test_head_format(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog.open(data / "audit.sqlite3").close()  # an empty log
    assert run(["audit", "head", "--data", str(data)], tmp_path) == 0
    assert capsys.readouterr().out == f"0:{GENESIS_HASH}\n"
    last = fill(data, 2)[-1]
    assert run(["audit", "head", "--data", str(data)], tmp_path) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"\d+:[0-9a-f]{64}\n", out)
    assert out == f"{last.seq}:{last.hash}\n"


def test_export_json_lines(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = fill(data, 4)
    assert run(["audit", "export", "--data", str(data)], tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json() for r in records]
    assert run(["audit", "export", "--data", str(data), "--after", "3"], tmp_path) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [4, 5]
    assert run(["audit", "export", "--data", str(data), "--after", "x"], tmp_path) == 2
    assert one_line(capsys.readouterr().err).startswith(ERROR_PREFIX + "--after must be")


def _module(args: list[str], env_data: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ALLOWHELP_DATA"}
    if env_data is not None:
        env["ALLOWHELP_DATA"] = str(env_data)
    return subprocess.run(
        [sys.executable, "-m", "allowhelp.broker.cli.audit", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_as_a_process(data: Path, tmp_path: Path) -> None:
    records = fill(data, 2)
    ok = _module(["verify"], env_data=data)
    assert (ok.returncode, ok.stdout) == (
        0,
        f"audit log intact: 3 records, head 3:{records[-1].hash}\n",
    )
    exported = _module(["export", "--data", str(data)])
    assert exported.returncode == 0
    assert [json.loads(x) for x in exported.stdout.splitlines()] == [r.to_json() for r in records]
    missing = _module(["verify", "--data", str(tmp_path / "nope")])
    assert missing.returncode == 2
    assert missing.stderr.startswith(ERROR_PREFIX) and "Traceback" not in missing.stderr
    (data / "audit.sqlite3").unlink()
    (data / "audit.sqlite3").write_text("not a database" * 100)
    bad = _module(["head", "--data", str(data)])
    assert bad.returncode == 1
    assert bad.stderr.startswith(ERROR_PREFIX) and "Traceback" not in bad.stderr
