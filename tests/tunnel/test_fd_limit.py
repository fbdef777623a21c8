"""The broker raises its open-file limit at start: one socket per agent."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from allowhelp.broker.node import limits as server
from harness import Fleet

LOWERED = 512  # below any sane hard limit, so the broker has something to raise


@contextmanager
def lowered_soft_limit(soft: int) -> Iterator[None]:
    """Children inherit limits: lower this process's soft limit while one starts."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no 'Max open files' line")


def expected_soft(hard: str) -> str:
    return Path("/proc/sys/fs/nr_open").read_text().strip() if hard == "unlimited" else hard


def test_broker_raises_its_soft_fd_limit_to_the_hard_limit(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOWERED:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    fleet = Fleet(tmp_path)
    try:
        with lowered_soft_limit(LOWERED):
            broker = fleet.broker().start()
        assert broker.proc is not None
        soft_now, hard_now = open_files_limit(broker.proc.pid)
        assert soft_now == expected_soft(hard_now)
        assert "agent tunnels" in broker.log.read_text()
    finally:
        fleet.close()


def test_an_unusable_limit_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object) -> None:
        raise ValueError("not allowed here")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert server.raise_fd_limit() == 1024
    assert "cannot raise the open-file limit" in caplog.text


def test_unlimited_limits_do_not_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    infinity = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _: (infinity, infinity))
    monkeypatch.setattr(resource, "setrlimit", lambda *a: None)
    assert server.raise_fd_limit() is None
    server.announce_fd_limit(None)
