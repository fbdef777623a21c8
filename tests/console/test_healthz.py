"""``GET /healthz`` against a real broker: 200 when the store and the audit log would
take a write, 503 naming the one that would not, fast, without login, and without
a record per probe.

The failures are real: a second process holds ``BEGIN EXCLUSIVE`` on
``broker.sqlite3`` or ``audit.sqlite3`` (as a backup tool or a stuck shell
would), or the data folder is a small tmpfs filled to the last byte.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from allowhelp.broker.console.api.health import PROBE_TIMEOUT
from harness import (
    ADMIN,
    ADMIN_PW,
    PY,
    Broker,
    audit_locked,
    broker_cli,
    staffed_broker,
    wait_for,
)

BOUND = PROBE_TIMEOUT + 2.0  # the answer comes by then, whatever holds the database
HEALTHY = {"status": "ok", "store": "ok", "audit": "ok"}

_HOLD_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
    "conn.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def store_locked(broker: Broker) -> Iterator[None]:
    """Another process holds the store's write lock until we leave."""
    holder = subprocess.Popen(
        [PY, "-c", _HOLD_LOCK, str(broker.data / "broker.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 30)
        assert ready and holder.stdout.readline() == b"locked\n", "the store lock was not taken"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


def health(broker: Broker, **headers: str) -> tuple[int, dict[str, Any], float]:
    """One probe from a client with no cookie: status, body, seconds it took."""
    started = time.monotonic()
    with httpx.Client(verify=broker.ssl_context(), timeout=30) as client:
        answer = client.get(broker.url + "/healthz", headers=headers)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body, time.monotonic() - started


def audit_head(broker: Broker) -> str:
    done = broker_cli("audit", "head", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def login(broker: Broker) -> int:
    with broker.sync_client() as client:
        answer = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        return answer.status_code


def test_a_healthy_broker_answers_200_without_login_and_records_nothing(broker: Broker) -> None:
    before = audit_head(broker)
    with httpx.Client(verify=broker.ssl_context(), timeout=30) as client:
        for _ in range(20):
            answer = client.get(broker.url + "/healthz")
            assert answer.status_code == 200
            assert answer.json() == HEALTHY
            assert answer.headers["cache-control"] == "no-store"
        assert not client.cookies  # no web session was made either
    assert audit_head(broker) == before  # monitoring polls: no record per probe


def test_a_locked_store_is_503_naming_the_store_and_answers_in_time(broker: Broker) -> None:
    with store_locked(broker):
        # The first poll gives up on the probe at PROBE_TIMEOUT; the next shares the
        # same probe (no queue on the store's writer) and may see its own answer.
        for _ in range(3):
            status, body, took = health(broker)
            assert status == 503, body
            assert body["status"] == "unavailable" and body["audit"] == "ok", body
            store = body["store"]
            assert "no answer within" in store or "database is locked" in store, body
            assert took < BOUND, took
    wait_for(lambda: health(broker)[0] == 200, 15, "healthz to recover once the lock is gone")
    assert health(broker)[1] == HEALTHY


def test_a_locked_audit_log_is_503_naming_the_audit_until_a_record_goes_in(
    broker: Broker,
) -> None:
    with audit_locked(broker):
        status, body, took = health(broker)
        assert status == 503, body
        assert body["status"] == "unavailable" and body["store"] == "ok", body
        assert "locked" in body["audit"], body
        assert took < BOUND, took
        assert login(broker) == 503  # a write the log refused (the login is refused with it)
    # The lock is gone, but the last commit was refused: still unavailable, and why.
    status, body, _ = health(broker)
    assert status == 503 and "the last audit write was refused" in body["audit"], body
    assert login(broker) == 200  # a record goes in again
    status, body, _ = health(broker)
    assert (status, body) == (200, HEALTHY)


def test_healthz_opens_no_hole_in_the_wall(broker: Broker) -> None:
    # Reading health from any page is harmless; anything else is refused as before.
    status, body, _ = health(broker, origin="https://evil.example")
    assert (status, body) == (200, HEALTHY)
    with httpx.Client(verify=broker.ssl_context(), timeout=30) as client:
        foreign = client.post(broker.url + "/healthz", headers={"origin": "https://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error"] == "foreign_origin"
        for method in ("POST", "PUT", "DELETE"):  # only GET (and HEAD) is health
            assert client.request(method, broker.url + "/healthz").status_code in (404, 405)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_503_naming_both_and_recovers_when_space_is_back(tmp_path: Path) -> None:
    data = tmp_path / "broker"
    data.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(data)], check=True
    )
    try:
        with staffed_broker(tmp_path) as fleet:
            broker = fleet.brokers[0]
            assert health(broker)[1] == HEALTHY
            filler = data / "filler"
            with filler.open("wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass
            status, body, took = health(broker)
            assert status == 503 and took < BOUND, body
            assert "the disk is full" in body["audit"], body
            assert "the disk is full" in body["store"], body
            filler.unlink()
            status, body, _ = health(broker)
            assert (status, body) == (200, HEALTHY)
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
