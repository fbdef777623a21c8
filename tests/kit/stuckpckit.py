"""A files session on a real per-user agent whose file system can be made to stop
answering: OpenSSH's sftp-server of the local user stopped with SIGSTOP, the way a
stuck network mount stops it, then let go (``test_files_timeouts.py``,
``test_files_stuck.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from userkit import UserAgent, allowed_files

from harness import Broker, Desk


def listing_url(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/files"


def files_url(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/files/content"


@contextmanager
def files_session(pc: tuple[Broker, UserAgent], why: str) -> Iterator[tuple[Desk, str]]:
    """A files session the PC user allowed, its SFTP channel open (one listing)."""
    desk, session_id = allowed_files(*pc, why)
    try:
        listed = desk.client.get(listing_url(session_id), params={"path": "."})
        assert listed.status_code == 200, listed.text
        yield desk, session_id
    finally:
        desk.close()


def transfers(broker: Broker, session_id: str, kind: str, path: str) -> list[dict[str, Any]]:
    """The details of the session's ``kind`` records about ``path``."""
    return [
        r["details"]
        for r in broker.audit_records(session_id)
        if r["type"] == kind and r["details"].get("path") == path
    ]


def as_user(user: str, code: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code], check=True)


def sftp_servers(user: str) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-u", user, "-x", "sftp-server"], capture_output=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


@contextmanager
def pc_not_answering(user: str) -> Iterator[list[int]]:
    """The user's sftp-server stopped for the block (a stuck mount under it), then let go."""
    pids = sftp_servers(user)
    assert pids, "no sftp-server of the user's running"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
