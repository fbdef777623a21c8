"""The suite's shared set-up.

Tests are grouped by the room of the product they hold to account (``model/``,
``audit/``, ``sessions/``, ...; ``house/`` for rules of the whole tree). The
helpers they share live in ``kit/`` and are importable as plain modules
(``from harness import ...``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "kit"))

from collectorkit import Collector
from debkit import Debs, build, debs_in, wheel_of_this_tree

from harness import Broker, Fleet, staffed_broker
from pgkit import Cluster, make_cluster


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet folder of one test (its brokers and agents stopped after); modules that
    need another define their own."""
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def staffed(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    """A running broker with an admin and a technician, shared by one test module."""
    name = request.module.__name__.rpartition(".")[2]
    with staffed_broker(tmp_path_factory.mktemp(name)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def broker(staffed: Fleet) -> Broker:
    """The broker of ``staffed``; modules that need another broker define their own."""
    return staffed.brokers[0]


# This machine's root shell runs `pyenv rehash` at every login (~/.bashrc). A
# test that ends a session while its login shell is still starting can kill
# that rehash before it removes its lock, and every later login shell then
# waits up to 60 s for it: the next shell test times out. The lock lives a
# second at most when nothing goes wrong: one that no running rehash holds, or
# older than a minute, is stale.
PYENV_LOCK = Path.home() / ".pyenv" / "shims" / ".pyenv-shim"


def _rehash_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"pyenv-rehash" in cmdline.read_bytes():
                return True
    return False


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """The CLIs set a private umask (runtime.run_command): a test that runs one
    in-process must not leave later tests making folders no one else can enter."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def _no_stale_pyenv_lock() -> None:
    with contextlib.suppress(OSError):
        if time.time() - PYENV_LOCK.stat().st_mtime > 60 or not _rehash_running():
            PYENV_LOCK.unlink()


# The .debs (tests/packaging/): built once per test session from a wheel of this tree.
@pytest.fixture(scope="session")
def wheel_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheel_of_this_tree(tmp_path_factory.mktemp("dist"))


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


# A real PostgreSQL for the multi-node tests (tests/multinode, kit/pgkit.py).
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    # Not under pytest's basetemp: that is 0700 root's, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="ahpg-"))
    root.chmod(0o755)
    try:
        cluster = make_cluster(root / "cluster")
        try:
            yield cluster
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh database of the cluster, for one test."""
    return pg_cluster.database()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A syslog collector on 127.0.0.1 (``collectorkit.py``), closed after the test."""
    collector = Collector(tmp_path / "collector.log")
    yield collector
    collector.close()
