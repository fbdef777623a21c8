"""One agent per PC, for real: the machine service as root, a helper as each of two users.

Two local users are made here (``useradd``) and removed after. The machine
service runs as root (``run --system``); each user's helper and CLI run as
that user (``runuser``) with the system Python (root's own interpreter is in
a folder other users cannot enter: the helper needs no asyncssh anyway).
Shells are real login shells on real PTYs, reached through the real broker's
terminal WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from machinekit import (
    CAN_RUN,
    WHY_NOT,
    Machine,
    child_of,
    enroll_system,
    local_users,
    passable_folder,
    rss_kib,
)
from playwright.sync_api import sync_playwright

from browserkit import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    broker_cli,
    staffed_broker,
    wait_for,
)
from terminalkit import terminal

USERS = ("ahtesta", "ahtestb")

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@dataclass
class Pc(Machine):
    broker: Broker | None = None

    def signed_in(self) -> str | None:
        assert self.broker is not None
        agent = next(a for a in self.broker.agents(ADMIN, ADMIN_PW) if a["id"] == self.agent_id)
        return agent["signed_in"] if agent["online"] else "(offline)"

    def start_helper(self, user: str, env: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        proc = super().start_helper(user, env)
        wait_for(lambda: self.signed_in() == user, 20, f"the broker to know {user} is signed in")
        return proc

    @property
    def the_broker(self) -> Broker:
        assert self.broker is not None
        return self.broker


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pc]:
    options = ("--consent-timeout", "30")
    with (
        local_users(*USERS),
        passable_folder() as root,
        staffed_broker(tmp_path_factory.mktemp("machine"), broker_args=options) as fleet,
    ):
        broker = fleet.brokers[0]
        pc = Pc(root, enroll_system(broker, root / "machine"), broker=broker)
        try:
            pc.start_service()
            wait_for(lambda: pc.signed_in() is None, 30, "the machine service to come online")
            yield pc
        finally:
            pc.stop()


@pytest.fixture
def desk(pc: Pc) -> Iterator[Desk]:
    desk = Desk.login(pc.the_broker, TECH, TECH_PW)
    yield desk
    desk.close()


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _run_in_terminal(desk: Desk, session_id: str, command: str, marker: bytes) -> bytes:
    async with terminal(desk, session_id) as term:
        await term.send(command + "\n")
        return await term.expect(marker, timeout=20)


def test_the_identity_is_roots_alone(pc: Pc) -> None:
    for name in ("agent.json", "host_key"):
        info = (pc.config / name).stat()
        assert info.st_uid == 0 and info.st_mode & 0o777 == 0o600
    assert (pc.config.stat().st_mode & 0o777) in (0o700, 0o711)  # no listing by others
    done = pc.cli(USERS[0], "pending")  # reachable: the socket; unreadable: the identity
    listing = subprocess.run(
        pc.as_user(USERS[0], "-c", f"import os; os.listdir({str(pc.config)!r})"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert "PermissionError" in listing.stderr
    assert done.returncode == 0, done.stderr


def test_nobody_signed_in_is_refused_at_once(pc: Pc, desk: Desk) -> None:
    assert pc.signed_in() is None
    started = time.monotonic()
    answer = desk.request(pc.agent_id, "shell")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "nobody_signed_in"
    assert time.monotonic() - started < 10  # not the 30 s consent timeout
    ended = [r for r in audit(pc.the_broker) if r["type"] == "session.ended"]
    assert ended[-1]["details"]["end_reason"] == "nobody_signed_in"


def test_shell_runs_as_the_signed_in_user_after_their_click(pc: Pc, desk: Desk) -> None:
    alice, bob = USERS
    pc.start_helper(bob)
    pc.start_helper(alice)  # the newest helper is the one signed in (no logind here)
    assert pc.signed_in() == alice
    session = desk.request(pc.agent_id, "shell").json()
    wait_for(lambda: any(p["session_id"] == session["id"] for p in pc.pending(alice)), 15, "prompt")
    # Another local user, even one with a helper of their own, sees and answers nothing.
    assert pc.pending(bob) == []
    refused = pc.cli(bob, "allow", session["id"])
    assert refused.returncode != 0 and "no request" in refused.stderr
    assert pc.cli(bob, "deny", session["id"]).returncode != 0
    assert desk.session(session["id"])["state"] == "awaiting_consent"
    done = pc.cli(alice, "allow", session["id"])
    assert done.returncode == 0, done.stderr
    desk.wait_state(session["id"], "active")
    seen = asyncio.run(
        _run_in_terminal(desk, session["id"], "echo U$(id -un)U", b"U" + alice.encode() + b"U")
    )
    assert b"Uahtesta" + b"U" in seen
    pc.stop_helper(bob)


def test_admin_shell_is_root_after_the_click_and_ends_when_the_user_ends_it(
    pc: Pc, desk: Desk
) -> None:
    alice, bob = USERS
    if alice not in pc.helpers:
        pc.start_helper(alice)
    session = desk.request(pc.agent_id, "admin-shell", reason="fix the print queue").json()
    shown = wait_for(
        lambda: next((p for p in pc.pending(alice) if p["session_id"] == session["id"]), None),
        15,
        "prompt",
    )
    assert shown["kind"] == "admin-shell"
    # Bob (no helper now, a local user all the same) cannot allow it either.
    assert pc.cli(bob, "allow", session["id"]).returncode != 0
    assert pc.cli(alice, "allow", session["id"]).returncode == 0
    desk.wait_state(session["id"], "active")

    async def root_then_end() -> bytes:
        async with terminal(desk, session["id"]) as term:
            await term.send("echo R$(id -u)R\n")
            seen = await term.expect(b"R0R", timeout=20)
            assert pc.cli(bob, "end", session["id"]).returncode != 0  # not bob's to end
            ended = await asyncio.to_thread(pc.cli, alice, "end", session["id"])
            assert ended.returncode == 0, ended.stderr
            with pytest.raises(websockets.ConnectionClosed):  # closed once she ended it
                async with asyncio.timeout(10):  # whatever output was still on its way first
                    while True:
                        await term.ws.recv()
            return seen

    assert b"R0R" in asyncio.run(root_then_end())
    over = desk.wait_state(session["id"], "ended")
    assert over["end_reason"] == "user"
    granted = next(
        r
        for r in audit(pc.the_broker)
        if r["type"] == "consent.granted" and r["target"] == session["id"]
    )
    assert "administrator (root) shell" in granted["details"]["prompt"]
    assert granted["details"]["kind"] == "admin-shell"
    recorded = desk.session(session["id"])
    assert recorded["kind"] == "admin-shell"
    # Recorded and replayed like a shell, as its own kind.
    admin = Desk.login(pc.the_broker, ADMIN, ADMIN_PW)
    try:
        replay = admin.client.get(f"/api/v1/sessions/{session['id']}/recording")
    finally:
        admin.close()
    assert replay.status_code == 200, replay.text
    assert "R0R" in replay.text
    replayed = [r for r in audit(pc.the_broker) if r["type"] == "session.replayed"]
    assert replayed[-1]["details"]["kind"] == "admin-shell"


def test_memory_of_both_processes(pc: Pc) -> None:
    """Noted in docs/design.md; bounded loosely so a leak or a web stack pulled
    into the helper shows."""
    alice = USERS[0]
    if alice not in pc.helpers:
        pc.start_helper(alice)
    assert pc.service is not None
    service = rss_kib(pc.service.pid)
    helper = rss_kib(child_of(pc.helpers[alice].pid))
    print(f"RSS: machine service {service / 1024:.1f} MiB, session helper {helper / 1024:.1f} MiB")
    assert service < 120 * 1024
    assert helper < 40 * 1024


def test_a_helper_that_dies_ends_its_sessions(pc: Pc, desk: Desk) -> None:
    alice = USERS[0]
    if alice not in pc.helpers:
        pc.start_helper(alice)
    session = desk.request(pc.agent_id, "shell").json()
    wait_for(lambda: pc.pending(alice), 15, "prompt")
    assert pc.cli(alice, "allow", session["id"]).returncode == 0
    desk.wait_state(session["id"], "active")

    async def kill_helper_midway() -> None:
        async with terminal(desk, session["id"]) as term:
            await term.send("echo PID:$$:$((1+1))X\n")
            seen = await term.expect(b":2X", timeout=20)
            found = re.search(rb"PID:(\d+):2X", seen)
            assert found is not None
            pid = int(found.group(1))
            assert Path(f"/proc/{pid}").exists()
            pc.stop_helper(alice, signal.SIGKILL)  # no goodbye, no clean-up of its own
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(term.ws.recv(), 15)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15, "the shell to be gone")

    asyncio.run(kill_helper_midway())
    over = desk.wait_state(session["id"], "ended")
    assert over["end_reason"] in ("signed_out", "error", "shell_exited")
    assert pc.signed_in() is None


@pytest.mark.browser
def test_the_console_shows_who_is_signed_in(pc: Pc) -> None:
    """Per machine, live: "nobody", then the user; Admin shell… only with someone there."""
    alice = USERS[0]
    for user in list(pc.helpers):
        pc.stop_helper(user)
    wait_for(lambda: pc.signed_in() is None, 15, "nobody signed in")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(pc.the_broker.url + "/")
            page.fill("input[name=username]", TECH)
            page.fill("input[name=password]", TECH_PW)
            page.click("#login-submit")
            row = page.locator(f'#machines-rows tr[data-agent="{pc.agent_id}"]')
            row.locator("td:text-is('nobody')").wait_for()
            admin = row.locator("button:has-text('Admin shell')")
            assert admin.is_disabled()
            pc.start_helper(alice)
            row.locator(f"td:text-is('{alice}')").wait_for()  # live, no reload
            assert admin.is_enabled()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "machine-signed-in.png"))
            admin.click()
            page.locator("#request-form input[value='admin-shell']:checked").wait_for()
        finally:
            browser.close()


def _prompted(pc: Pc, desk: Desk, user: str, code: str) -> str:
    """A shell asked with help code ``code``: the code its prompt shows ``user``
    (empty: the "You asked for help" line is not shown). Denied after."""
    answer = desk.request(pc.agent_id, "shell", help_code=code)
    assert answer.status_code == 201, answer.text
    session_id = answer.json()["id"]
    wait_for(lambda: any(p["session_id"] == session_id for p in pc.pending(user)), 15, "prompt")
    (shown,) = [p for p in pc.pending(user) if p["session_id"] == session_id]
    assert pc.cli(user, "deny", session_id).returncode == 0
    return str(shown["help_code"])


def test_you_asked_for_help_after_the_service_restarted(pc: Pc, desk: Desk) -> None:
    """The machine service keeps who asked for each help code (``helpcodes.py``): once
    restarted, it still says "You asked for help" to the user who asked, and to
    nobody else."""
    alice, bob = USERS
    for user in list(pc.helpers):
        pc.stop_helper(user)
    pc.start_helper(alice)
    codes = []
    for n in range(2):
        asked = pc.cli(alice, "request-help", "--message", f"printer {n}")
        assert asked.returncode == 0, asked.stderr
        codes.append(asked.stdout.strip())
    pc.stop()
    pc.start_service()
    wait_for(lambda: pc.signed_in() is None, 30, "the machine service to come online")
    pc.start_helper(bob)  # bob signs in: the technician calls back with alice's code
    assert _prompted(pc, desk, bob, codes[0]) == ""
    pc.start_helper(alice)  # the newest helper is the one signed in
    assert _prompted(pc, desk, alice, codes[1]) == codes[1]
    for user in list(pc.helpers):
        pc.stop_helper(user)
