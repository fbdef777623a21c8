"""The audit log under a real broker: crashes and full disks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Fleet, audit_locked, broker_cli


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_kill_9_during_a_burst_of_logins(fleet: Fleet) -> None:
    broker = fleet.broker().start()
    broker.add_user(TECH, TECH_PW)
    stop = threading.Event()
    answered = []

    def burst() -> None:
        with broker.sync_client() as client:
            for _ in range(400):
                if stop.is_set():
                    return
                # No cookie sent: each login adds a web session (a login with a
                # cookie would replace that cookie's session, keeping one per client).
                client.cookies.clear()
                try:
                    answer = client.post(
                        "/api/v1/login", json={"username": TECH, "password": TECH_PW}
                    )
                except httpx.HTTPError:
                    return
                answered.append(answer.status_code)

    workers = [threading.Thread(target=burst) for _ in range(3)]
    for worker in workers:
        worker.start()
    deadline = 30.0
    while len(answered) < 20 and deadline > 0:
        threading.Event().wait(0.1)
        deadline -= 0.1
    broker.kill()  # SIGKILL mid-burst
    stop.set()
    for worker in workers:
        worker.join(30)
    assert len(answered) >= 20
    verify = broker_cli("audit", "verify", "--data", str(broker.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    logins = count(
        broker.data / "audit.sqlite3", "SELECT count(*) FROM audit WHERE type='auth.login.ok'"
    )
    sessions = count(broker.data / "broker.sqlite3", "SELECT count(*) FROM web_sessions")
    assert sessions >= 20  # they accumulate, so the comparison below can fail
    assert sessions <= logins  # every session that exists was audited first
    broker.start()
    assert broker_cli("audit", "verify", "--data", str(broker.data)).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"this test needs to mount a small tmpfs (as root): {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_refuses_logins_with_a_clear_error(fleet: Fleet, tiny_disk: Path) -> None:
    broker = fleet.broker()
    broker.data = tiny_disk / "data"
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    filler = tiny_disk / "filler"
    with filler.open("wb") as handle:  # take every free block
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with broker.sync_client() as client:
        refused = None
        for _ in range(50):  # SQLite may still fit a few records in free pages
            answer = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
            if answer.status_code != 200:
                refused = answer
                break
        assert refused is not None, "logins kept succeeding on a full disk"
        assert refused.status_code == 503
        assert refused.json()["error"] == "audit_unavailable"
        assert "refused" in refused.json()["message"]
        filler.unlink()
        os.sync()
        assert (
            client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW}).status_code
            == 200
        )
    assert broker.proc is not None and broker.proc.poll() is None  # still serving
    assert broker_cli("audit", "verify", "--data", str(broker.data)).returncode == 0


def test_a_login_the_log_refuses_opens_no_web_session(fleet: Fleet) -> None:
    """Deterministic where the kill -9 burst is statistical: with the audit log
    failing for real (another process holds its write lock), a right password
    gets 503 and no cookie, and no web session is stored for it."""
    broker = fleet.broker().start()
    broker.add_user(TECH, TECH_PW)
    db = broker.data / "broker.sqlite3"
    before = count(db, "SELECT count(*) FROM web_sessions")
    with broker.sync_client() as client:
        with audit_locked(broker):
            refused = client.post("/api/v1/login", json={"username": TECH, "password": TECH_PW})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "audit_unavailable"
            assert "set-cookie" not in refused.headers
            assert count(db, "SELECT count(*) FROM web_sessions") == before
        assert client.get("/api/v1/me").status_code == 401
        done = client.post("/api/v1/login", json={"username": TECH, "password": TECH_PW})
        assert done.status_code == 200
    assert count(db, "SELECT count(*) FROM web_sessions") == before + 1
    assert broker_cli("audit", "verify", "--data", str(broker.data)).returncode == 0
