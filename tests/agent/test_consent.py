"""Consent through a real broker and a real agent: ask, allow, deny, expire, end."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from allowhelp.broker.sessions.help import MAX_OPEN_PER_AGENT
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    agent_call,
    broker_cli,
    pending,
    running_fleet,
    wait_for,
    wait_pending,
)

TECH_B, TECH_B_PW = "bob", "bob password 1234"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    root = tmp_path_factory.mktemp("consent")
    options = ("--consent-timeout", "4", "--organisation", "ACME IT")
    with running_fleet(root, broker_args=options) as (_, broker, agent):
        broker.add_user(TECH_B, TECH_B_PW)
        yield broker, agent


@pytest.fixture
def desk(setup: tuple[Broker, Agent]) -> Iterator[Desk]:
    desk = Desk.login(setup[0], TECH, TECH_PW)
    yield desk
    desk.close()


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_allow_makes_the_session_active(setup: tuple[Broker, Agent], desk: Desk) -> None:
    broker, agent = setup
    answer = desk.request(agent.agent_id, reason="Outlook crashes at start")
    assert answer.status_code == 201, answer.text
    session = answer.json()
    assert session["state"] == "awaiting_consent"
    assert len(session["phrase"].split()) == 3
    shown = wait_pending(agent, session["id"])
    assert shown["technician"] == TECH  # full name defaults to the user name
    assert shown["kind"] == "shell"
    assert shown["reason"] == "Outlook crashes at start"
    assert shown["phrase"] == session["phrase"]
    assert shown["organisation"] == "ACME IT"
    done = agent_call(agent, "allow", session["id"])
    assert done.returncode == 0, done.stderr
    active = desk.wait_state(session["id"], "active")
    assert active["decided"] is not None
    granted = next(
        r for r in audit(broker) if r["type"] == "consent.granted" and r["target"] == session["id"]
    )
    details = granted["details"]
    assert details["via"] == "cli"
    assert details["decision"] == "granted"
    assert "Outlook crashes at start" in details["prompt"]
    assert session["phrase"] in details["prompt"]
    assert details["seconds_to_decide"] >= 0
    assert desk.client.post(f"/api/v1/sessions/{session['id']}/end").status_code == 200
    ended = desk.session(session["id"])
    assert ended["state"] == "ended" and ended["end_reason"] == "technician"


def test_deny(setup: tuple[Broker, Agent], desk: Desk) -> None:
    _, agent = setup
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    assert agent_call(agent, "deny", session["id"]).returncode == 0
    assert desk.wait_state(session["id"], "denied")["end_reason"] == "denied"
    again = agent_call(agent, "allow", session["id"])
    assert again.returncode == 2 and "no request" in again.stderr


def test_no_answer_expires(setup: tuple[Broker, Agent], desk: Desk) -> None:
    broker, agent = setup
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    desk.wait_state(session["id"], "expired", timeout=10)
    wait_for(lambda: not pending(agent), 5, "the prompt to disappear")
    late = agent_call(agent, "allow", session["id"])
    assert late.returncode == 2
    assert "consent.expired" in [r["type"] for r in audit(broker) if r["target"] == session["id"]]


def test_technician_b_cannot_see_or_end_a_session(setup: tuple[Broker, Agent], desk: Desk) -> None:
    broker, agent = setup
    session = desk.request(agent.agent_id).json()
    other = Desk.login(broker, TECH_B, TECH_B_PW)
    try:
        assert other.client.get(f"/api/v1/sessions/{session['id']}").status_code == 404
        assert other.client.post(f"/api/v1/sessions/{session['id']}/end").status_code == 404
        assert session["id"] not in [s["id"] for s in other.client.get("/api/v1/sessions").json()]
    finally:
        other.close()
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        assert admin.client.get(f"/api/v1/sessions/{session['id']}").status_code == 200
    finally:
        admin.close()
    agent_call(agent, "deny", session["id"])


def test_bad_requests_are_refused(setup: tuple[Broker, Agent], desk: Desk) -> None:
    _, agent = setup
    assert desk.request(agent.agent_id, kind="sftp").status_code == 400
    assert desk.request(agent.agent_id, reason="").status_code == 400
    assert desk.request(agent.agent_id, reason="x" * 501).status_code == 400
    assert desk.request("a-nosuchagentatall000").status_code == 404
    no_csrf = desk.client.post(
        "/api/v1/sessions",
        json={"agent_id": agent.agent_id, "kind": "shell", "reason": "x"},
        headers={"X-CSRF-Token": "wrong"},
    )
    assert no_csrf.status_code == 403


def test_hostile_reason_reaches_the_user_as_plain_text(
    setup: tuple[Broker, Agent], desk: Desk
) -> None:
    _, agent = setup
    hostile = "<b>urgent</b>\x1b[2J\x1b]52;c;ZXZpbA==\x07 please"
    session = desk.request(agent.agent_id, reason=hostile).json()
    shown = wait_pending(agent, session["id"])
    assert "\x1b" not in shown["reason"] and "\x07" not in shown["reason"]
    assert "<b>urgent</b>" in shown["reason"]  # kept as text, never interpreted
    human = agent_call(agent, "pending")
    assert "\x1b" not in human.stdout
    agent_call(agent, "deny", session["id"])


def test_offline_agent_is_a_clear_error(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        broker = fleet.broker().start()
        broker.add_user(TECH, TECH_PW)
        agent = fleet.agent()
        assert agent.enroll(broker.token()).returncode == 0
        desk = Desk.login(broker, TECH, TECH_PW)
        answer = desk.request(agent.agent_id)
        assert answer.status_code == 409
        assert answer.json()["error"] == "agent_offline"
        desk.close()
    finally:
        fleet.close()


@pytest.mark.parametrize("who", ["user", "technician"])
def test_user_ends_and_the_broker_closes_the_technician_channel_saying_so(
    setup: tuple[Broker, Agent], desk: Desk, who: str
) -> None:
    """The user's end (or the technician's End button) closes the socket from the
    broker's side, with the reason on the record (not a timeout, nor a cut
    connection, nor the relay's own guess: the PC closing the channel after the
    technician's end once said "user"). The time bound is loose on purpose:
    nothing else would close this socket for much longer (no idle timeout)."""
    _, agent = setup
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    agent_call(agent, "allow", session["id"])
    desk.wait_state(session["id"], "active")

    async def scenario() -> tuple[float, websockets.ConnectionClosed]:
        async with websockets.connect(
            desk.ws_url(session["id"]),
            ssl=desk.broker.ssl_context(),
            origin=desk.broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            await ws.send(b"echo ready-$((40+2))\n")
            seen = b""
            while b"ready-42" not in seen:
                seen += await asyncio.wait_for(ws.recv(), 10)  # type: ignore[operator]
            if who == "user":
                ended = await asyncio.to_thread(agent_call, agent, "end", session["id"])
                assert ended.returncode == 0, ended.stderr
            else:
                url = f"/api/v1/sessions/{session['id']}/end"
                answer = await asyncio.to_thread(desk.client.post, url)
                assert answer.status_code == 200, answer.text
            start = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return time.monotonic() - start, closed.value

    took, closed = asyncio.run(scenario())
    assert closed.rcvd is not None, "the socket was cut, not closed by the broker"
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, f"session ended: {who}")
    assert took < 5.0
    final = desk.wait_state(session["id"], "ended")
    assert final["end_reason"] == who


def test_control_socket_refuses_another_user(setup: tuple[Broker, Agent]) -> None:
    _, agent = setup
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is required for this test")
    from allowhelp.agent.localpath import socket_path

    path = socket_path(agent.config)
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\n"
        "except OSError as e:\n print('refused', e.errno); sys.exit(0)\n"
        "try:\n s.sendall(b'{}\\n')\nexcept OSError:\n pass\n"
        "print(s.recv(4096).decode())\n"
    )
    # The system Python: the virtual environment's may sit in a folder nobody cannot read.
    python = "/usr/bin/python3"
    assert Path(python).exists(), "Debian's python3 is needed to run a client as nobody"
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", probe]
    as_is = subprocess.run(
        [*nobody, str(path)], capture_output=True, text=True, timeout=20, check=False
    )
    assert "refused" in as_is.stdout, as_is.stdout + as_is.stderr  # 0700 runtime dir, 0600 socket
    # Loosen the file modes all the way to the socket (it lives in the user's own
    # home when XDG_RUNTIME_DIR is unset): the peer-credential check must still refuse.
    closed = [d for d in path.parents if not d.stat().st_mode & stat.S_IXOTH]
    modes = {p: p.stat().st_mode & 0o777 for p in (*closed, path)}
    try:
        for folder in closed:
            folder.chmod(modes[folder] | stat.S_IXOTH)
        path.chmod(0o666)
        loosened = subprocess.run(
            [*nobody, str(path)], capture_output=True, text=True, timeout=20, check=False
        )
    finally:
        for item, mode in modes.items():
            item.chmod(mode)
    assert "another user" in loosened.stdout, loosened.stdout + loosened.stderr


def test_help_request_code_and_session_from_it(setup: tuple[Broker, Agent], desk: Desk) -> None:
    _, agent = setup
    done = agent_call(agent, "request-help", "--message", "VPN drops <every> hour")
    assert done.returncode == 0, done.stderr
    code = done.stdout.strip()
    assert len(code.replace(" ", "")) == 6 and code.replace(" ", "").isdigit()
    queue = desk.client.get("/api/v1/help-requests").json()
    ticket = next(t for t in queue if t["code"] == code.replace(" ", ""))
    assert ticket["agent_id"] == agent.agent_id
    assert ticket["message"] == "VPN drops <every> hour"
    session = desk.request(agent.agent_id, help_code=code).json()
    shown = wait_pending(agent, session["id"])
    assert shown["help_code"] == code
    assert agent_call(agent, "deny", session["id"]).returncode == 0
    assert code.replace(" ", "") not in [
        t["code"] for t in desk.client.get("/api/v1/help-requests").json()
    ]
    wrong = desk.request(agent.agent_id, help_code="000 000")
    assert wrong.status_code == 400


def test_help_request_over_the_limit_is_refused_audited_and_told(
    setup: tuple[Broker, Agent], desk: Desk
) -> None:
    """A sixth open request gets a plain refusal at once, not a 15 s silence."""
    broker, agent = setup
    queue = desk.client.get("/api/v1/help-requests").json()
    open_here = [t for t in queue if t["agent_id"] == agent.agent_id]
    for n in range(MAX_OPEN_PER_AGENT - len(open_here)):
        done = agent_call(agent, "request-help", "--message", f"printer {n}")
        assert done.returncode == 0, done.stderr
    started = time.monotonic()
    refused = agent_call(agent, "request-help", "--message", "one more <b>please</b>")
    assert time.monotonic() - started < 10
    assert refused.returncode != 0
    assert "already has 5 open help requests" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    record = next(r for r in reversed(audit(broker)) if r["type"] == "help.refused")
    assert record["target"] == agent.agent_id
    assert record["actor"] == f"user@{agent.agent_id}"
    assert record["details"]["reason"] == "too_many_open"
    assert record["details"]["message"] == "one more <b>please</b>"
    queue = desk.client.get("/api/v1/help-requests").json()
    assert len([t for t in queue if t["agent_id"] == agent.agent_id]) == MAX_OPEN_PER_AGENT
