"""Files, view only: the technician asks for it, the PC user is told so, and nothing
on the PC can be changed, refused on both sides.

Real pieces as in ``test_files.py``: a broker, the user's own agent (as the local
user ``ahview``), OpenSSH's sftp-server. The request says ``view_only: true``; the
consent prompt (its audited text) says "view only"; the broker refuses an upload
with 403 before anything is recorded or sent; the PC's sftp-server runs with ``-R``
(read-only) so even a broker that forgot would be refused by the PC.
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from machinekit import CAN_RUN, WHY_NOT
from userkit import UserAgent, user_agent_online, user_path

from allowhelp.agent.files import files_command
from harness import TECH, TECH_PW, Broker, Desk

USER = "ahview"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    with user_agent_online(tmp_path_factory.mktemp("view"), USER) as made:
        yield made


@pytest.fixture(scope="module")
def viewing(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    broker, agent = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.client.post(
        "/api/v1/sessions",
        json={"agent_id": agent.agent_id, "kind": "files", "view_only": True, "reason": "logs"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["view_only"] is True and answer.json()["kind"] == "files"
    session_id: str = answer.json()["id"]
    agent.wait_pending(session_id)
    assert agent.cli("allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    yield desk, session_id
    desk.close()


def records(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    return broker.audit_records(session_id)


def files_url(session_id: str, what: str = "files/content") -> str:
    return f"/api/v1/sessions/{session_id}/{what}"


def test_the_pc_user_is_asked_for_view_only_and_the_record_says_so(
    pc: tuple[Broker, UserAgent], viewing: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = viewing
    listed = desk.client.get(files_url(session_id, "files"), params={"path": "."})
    assert listed.status_code == 200, listed.text
    kept = records(broker, session_id)
    granted = next(r["details"] for r in kept if r["type"] == "consent.granted")
    assert "asks to see your files, view only" in granted["prompt"]
    assert "cannot change anything" in granted["prompt"]
    assert granted["scope"] == "files view-only"
    for kind in ("session.requested", "session.started", "files.listed"):
        details = next(r["details"] for r in kept if r["type"] == kind)
        assert details["read_only"] is True, kind
    shown = desk.client.get(f"/api/v1/sessions/{session_id}")
    assert shown.json()["view_only"] is True


def test_a_view_only_session_reads_and_downloads(viewing: tuple[Desk, str]) -> None:
    desk, session_id = viewing
    target = user_path(USER, "report.txt")
    subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", f"echo report > {target}"], check=True)
    got = desk.client.get(files_url(session_id), params={"path": "report.txt"})
    assert got.status_code == 200 and got.content == b"report\n"


def test_an_upload_is_refused_by_the_broker_before_anything_happens(
    pc: tuple[Broker, UserAgent], viewing: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = viewing
    for name in (".bashrc", "new.txt"):
        put = desk.client.put(files_url(session_id), params={"path": name}, content=b"x")
        assert put.status_code == 403, put.text
        assert put.json()["error"] == "view_only"
    assert not user_path(USER, "new.txt").exists()
    started = [r for r in records(broker, session_id) if r["type"] == "files.transfer.started"]
    assert all(r["details"]["direction"] == "download" for r in started)
    refused = [r for r in records(broker, session_id) if r["type"] == "files.refused"]
    assert [(r["code"], r["details"]["path"], r["details"]["why"]) for r in refused] == [
        ("AH1510", ".bashrc", "view only"),
        ("AH1510", "new.txt", "view only"),
    ]
    assert all(r["actor"] == f"technician:{TECH}" for r in refused)
    assert [p.name for p in user_path(USER).iterdir() if ".allowhelp-" in p.name] == []


def test_the_pcs_sftp_server_is_read_only(viewing: tuple[Desk, str]) -> None:
    """Defence on the PC too: the user's sftp-server for this grant got ``-R``."""
    found = subprocess.run(
        ["pgrep", "-a", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
    )
    lines = found.stdout.decode().splitlines()
    assert lines and all(" -R " in f" {line} " for line in lines), lines
    argv = files_command(pwd.getpwnam(USER).pw_uid, read_only=True)
    assert "-R" in argv
    assert "-R" not in files_command(pwd.getpwnam(USER).pw_uid)


def test_a_read_write_files_session_is_unchanged(pc: tuple[Broker, UserAgent]) -> None:
    broker, agent = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.request(agent.agent_id, "files", "send the scan")
        assert answer.status_code == 201 and answer.json()["view_only"] is False
        session_id = answer.json()["id"]
        agent.wait_pending(session_id)
        assert agent.cli("allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        put = desk.client.put(files_url(session_id), params={"path": "scan.pdf"}, content=b"s")
        assert put.status_code == 201, put.text
        requested = next(
            r["details"] for r in records(broker, session_id) if r["type"] == "session.requested"
        )
        assert "read_only" not in requested
    finally:
        desk.close()


@pytest.mark.parametrize(
    ("kind", "view_only"), [("screen", True), ("shell", True), ("files", "yes"), ("files", 1)]
)
def test_view_only_is_for_files_and_a_boolean(
    pc: tuple[Broker, UserAgent], kind: str, view_only: object
) -> None:
    broker, agent = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.client.post(
            "/api/v1/sessions",
            json={"agent_id": agent.agent_id, "kind": kind, "view_only": view_only, "reason": "x"},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "bad_view_only"
    finally:
        desk.close()
