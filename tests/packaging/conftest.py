"""The .debs, built once per test run by packaging/build-debs from a wheel of this tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from debkit import REPO, Debs, build, debs_in


@pytest.fixture(scope="session")
def wheel_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("no dpkg-deb on this machine: the .debs are built on Debian or Ubuntu")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dist


@pytest.fixture(scope="session")
def debs(wheel_dist: Path) -> Debs:
    """The packages as shipped: the wheel's version, xz-compressed."""
    build(wheel_dist)
    return debs_in(wheel_dist)


@pytest.fixture(scope="session")
def next_debs(wheel_dist: Path, debs: Debs, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """A later build of the same tree (version override; zstd, which builds 10x faster)."""
    dist = tmp_path_factory.mktemp("dist-next")
    wheel = next(wheel_dist.glob("allowhelp-*.whl"))
    build(dist, "--wheel", str(wheel), "--version", f"{debs.version}+next1", "--compress", "zstd")
    return debs_in(dist)
