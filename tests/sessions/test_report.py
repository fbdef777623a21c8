"""The session report for the ticket system: signed, delivered at least once, for real.

A real HTTP receiver on 127.0.0.1 checks every signature (``receiverkit.verify``,
the check docs/integrations.md describes). A receiver that answers 500 gets the
report again; a broker stopped with a report owed sends it after its restart.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from receiverkit import SECRET, Receiver, receiver

from allowhelp.broker.sessions.report import backoff, post, signature
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    broker_cli,
    running_fleet,
    wait_for,
    wait_pending,
)


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


def secret_file(folder: Path, secret: bytes = SECRET) -> Path:
    path = folder / "webhook.secret"
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


def denied_session(desk: Desk, agent: Agent, ticket: str) -> str:
    answer = desk.request(agent.agent_id, "shell", "the VPN fails", ticket=ticket)
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    wait_pending(agent, session_id)
    assert agent_call(agent, "deny", session_id).returncode == 0
    desk.wait_state(session_id, "denied")
    return session_id


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[tuple[Receiver, tuple[str, ...]]]:
    with receiver() as state:
        args = ("--webhook", state.url, "--webhook-secret-file", str(secret_file(tmp_path)))
        yield state, args


def test_a_report_is_signed_and_says_what_happened(
    tmp_path: Path, hook: tuple[Receiver, tuple[str, ...]]
) -> None:
    state, args = hook
    with running_fleet(tmp_path, broker_args=args) as (_, broker, agent):
        desk = Desk.login(broker, TECH, TECH_PW)
        session_id = denied_session(desk, agent, "HD-1234")
        report = wait_for(lambda: state.by_session(session_id), 20, "the report")
        desk.close()
        assert state.refused == []
        assert report["ticket"] == "HD-1234" and report["kind"] == "shell"
        assert report["reason"] == "the VPN fails"
        assert report["pc"]["agent_id"] == agent.agent_id
        assert report["technician"]["username"] == TECH
        assert report["consent"]["decision"] == "denied"
        assert report["end_reason"] == "denied"
        assert report["times"]["created"] <= report["times"]["ended"]
        assert report["file_transfers"] == [] and report["chat"] == []
        assert report["recording"] is None
        kinds = [r["type"] for r in audit(broker) if r["target"] == session_id]
        assert "report.queued" in kinds and "report.delivered" in kinds


def test_a_failing_receiver_is_retried_and_a_restart_delivers_what_is_owed(
    tmp_path: Path, hook: tuple[Receiver, tuple[str, ...]]
) -> None:
    state, args = hook
    state.status = 500
    with running_fleet(tmp_path, broker_args=args) as (_, broker, agent):
        desk = Desk.login(broker, TECH, TECH_PW)
        session_id = denied_session(desk, agent, "HD-500")
        failed = wait_for(
            lambda: [r for r in audit(broker) if r["type"] == "report.failed"], 20, "a failure"
        )
        assert "HTTP 500" in failed[0]["details"]["error"]
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        owed = admin.client.get("/api/v1/reports").json()
        assert owed[0]["session_id"] == session_id and owed[0]["delivered"] is None
        assert "HTTP 500" in owed[0]["last_error"] and owed[0]["attempts"] >= 1
        assert desk.client.get("/api/v1/reports").status_code == 403  # admins only
        desk.close()
        admin.close()
        assert broker.stop() == 0  # a clean stop with the report still owed
        state.status = 200
        broker.start()
        report = wait_for(lambda: state.by_session(session_id), 20, "the owed report")
        assert report["ticket"] == "HD-500"
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        delivered = admin.client.get("/api/v1/reports").json()
        assert delivered[0]["delivered"] is not None
        admin.close()
        assert state.refused == []


def test_a_receiver_that_never_answers_times_out() -> None:
    """The one HTTP call, against a socket that accepts and says nothing."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        held: list[socket.socket] = []
        taker = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
        taker.start()
        started = time.monotonic()
        with pytest.raises(OSError):
            post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout=0.5)
        assert time.monotonic() - started < 5
        for conn in held:
            conn.close()


def test_a_refused_connection_is_a_failure_on_the_record(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nothing listens there
    args = (
        "--webhook",
        f"http://127.0.0.1:{port}/",
        "--webhook-secret-file",
        str(secret_file(tmp_path)),
    )
    with running_fleet(tmp_path, broker_args=args) as (_, broker, agent):
        desk = Desk.login(broker, TECH, TECH_PW)
        denied_session(desk, agent, "")
        desk.close()
        failed = wait_for(
            lambda: [r for r in audit(broker) if r["type"] == "report.failed"], 20, "a failure"
        )
        assert "no answer from the ticket system" in failed[0]["details"]["error"]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--webhook", "http://tickets/"), "go together"),
        (("--webhook-secret-file", "SECRET"), "go together"),
        (("--webhook", "ftp://tickets/", "--webhook-secret-file", "SECRET"), "http:// or https://"),
        (("--webhook", "http://t/", "--webhook-secret-file", "/nonexistent"), "No such file"),
        (("--webhook", "http://t/", "--webhook-secret-file", "SHORT"), "at least 16 bytes"),
    ],
)
def test_bad_webhook_flags_are_one_line_errors(
    tmp_path: Path, flags: tuple[str, ...], needle: str
) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    args = [{"SECRET": str(secret_file(tmp_path)), "SHORT": str(short)}.get(f, f) for f in flags]
    done = subprocess.run(
        [
            *Broker(tmp_path / "data").program,
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--https",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert SECRET.decode() not in done.stderr


def test_backoff_doubles_from_10_seconds_to_an_hour() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]
    assert backoff(30) == 3600.0


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'{"session": "x"}'
    assert signature(SECRET, body) == "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body + b" ") != signature(SECRET, body)
