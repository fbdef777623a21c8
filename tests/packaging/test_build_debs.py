"""packaging/build-debs refuses what it cannot build from with one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from debkit import BUILD_DEBS


def build_debs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD_DEBS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wheel(dist: Path, version: str) -> Path:
    path = dist / f"allowhelp-{version}-py3-none-any.whl"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", [], "no such folder: "),
        ("empty", [], "no allowhelp-*-py3-none-any.whl in "),
        ("two", [], "holds several wheels (allowhelp-1.0-py3-none-any.whl, allowhelp-1.1-py3"),
        ("one", ["--version", "1.0 beta"], "not a Debian version: '1.0 beta'"),
        ("one", ["--wheel", "nowhere.whl"], "no such wheel: nowhere.whl"),
    ],
)
def test_refuses_with_one_line(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    dist = tmp_path / "dist"
    if setup != "none":
        dist.mkdir()
    if setup in ("one", "two"):
        wheel(dist, "1.0")
    if setup == "two":
        wheel(dist, "1.1")
    done = build_debs(str(dist), *args)
    assert done.returncode == 2
    assert done.stderr.startswith("build-debs: error: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not list(tmp_path.rglob("*.deb"))


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    done = build_debs(str(tmp_path), "--arch", "riscv64")
    assert done.returncode == 2
    assert "invalid choice: 'riscv64'" in done.stderr
