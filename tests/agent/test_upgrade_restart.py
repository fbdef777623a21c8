"""An agent upgraded from inside a help session restarts into the new version once
nobody is being helped (``agent/upgrade.py``), never under the session.

Real parts: the machine service as root (``run --system``), a real local user's
session helper, the real broker, and an admin shell in which the technician does
what the package's postinst does when it runs inside a session: it leaves the
mark in the service's folder. The service must go on while the shell is granted,
and stop by itself (status 0: systemd's ``Restart=always`` starts the new version)
once the user ends it; a start clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine
from signedinkit import signed_in_pc

from allowhelp.agent.upgrade import CHECK_EVERY, SERVICE_UNIT, UPGRADED_FILE
from harness import PY, TECH, TECH_PW, Desk, wait_for
from terminalkit import terminal

USER = "ahupgrade"
POSTINST = Path(__file__).resolve().parents[2] / "packaging/debian/allowhelp-agent/postinst"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


def test_the_postinst_leaves_the_mark_the_service_looks_for() -> None:
    text = POSTINST.read_text()
    assert "config=/etc/allowhelp/agent" in text
    assert f': > "$config/{UPGRADED_FILE}"' in text


@pytest.fixture
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Desk]]:
    with signed_in_pc(tmp_path_factory.mktemp("upgrade"), [USER]) as (broker, pc):
        desk = Desk.login(broker, TECH, TECH_PW)
        try:
            yield pc, desk
        finally:
            desk.close()


def _service_log(pc: Machine) -> str:
    return (pc.root / "service.log").read_text(errors="replace")


def test_an_upgrade_inside_a_session_waits_for_its_end_then_restarts(
    machine: tuple[Machine, Desk],
) -> None:
    pc, desk = machine
    service = pc.service
    assert service is not None
    answer = desk.request(pc.agent_id, "admin-shell", reason="upgrade allowhelp")
    assert answer.status_code == 201, answer.text
    session_id = answer.json()["id"]
    wait_for(lambda: any(p["session_id"] == session_id for p in pc.pending(USER)), 15, "the prompt")
    assert pc.cli(USER, "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    mark = pc.config / UPGRADED_FILE

    async def upgrade_inside_the_shell() -> None:
        async with terminal(desk, session_id) as term:
            # what the postinst does when it finds itself inside a help session
            await term.send(f': > "{mark}"; echo M$((40+2))M\n')
            await term.expect(b"M42M", timeout=20)
            # two checks go by with the mark there: the session goes on
            await asyncio.sleep(2 * CHECK_EVERY + 1)
            assert service.poll() is None, _service_log(pc)[-2000:]
            await term.send("echo S$((6*7))S\n")
            await term.expect(b"S42S", timeout=20)
            assert mark.exists()
            ended = await asyncio.to_thread(pc.cli, USER, "end", session_id)
            assert ended.returncode == 0, ended.stderr

    asyncio.run(upgrade_inside_the_shell())
    started = time.monotonic()
    code = service.wait(CHECK_EVERY * 3)  # stopped by itself, for systemd to restart it
    assert code == 0, _service_log(pc)[-2000:]
    assert time.monotonic() - started <= CHECK_EVERY * 3
    assert "upgraded during a help session" in _service_log(pc)
    assert desk.session(session_id)["end_reason"] == "user"  # the user's end, not ours
    # the start systemd makes: the new version runs, the mark is spent
    pc.start_service()
    assert not mark.exists()
    wait_for(lambda: pc.agent_row(desk.broker)["online"], 20, "the service back online")


def test_an_idle_service_restarts_at_once(machine: tuple[Machine, Desk]) -> None:
    pc, _ = machine
    service = pc.service
    assert service is not None
    (pc.config / UPGRADED_FILE).touch()
    assert service.wait(CHECK_EVERY * 3) == 0, _service_log(pc)[-2000:]
    log = _service_log(pc)
    assert "the package was upgraded; nobody is being helped now" in log


SYSTEMD_GROUPS = Path("/sys/fs/cgroup/systemd")  # systemd's own v1 hierarchy, here


@pytest.fixture
def service_group() -> Iterator[Path]:
    """A control group named as the unit's (``allowhelp-agent.service``), as systemd
    makes one; its ``cgroup.procs``."""
    if not os.access(SYSTEMD_GROUPS, os.W_OK):
        pytest.skip(f"{SYSTEMD_GROUPS} cannot be written here")
    parent = SYSTEMD_GROUPS / f"ahupgrade-{os.getpid()}"
    group = parent / SERVICE_UNIT
    group.mkdir(parents=True)
    try:
        yield group / "cgroup.procs"
    finally:
        for folder in (group, parent):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _in_group(procs: Path, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` started inside the group, as systemd starts what a unit runs."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def test_what_a_session_left_running_in_the_group_holds_the_restart(
    machine: tuple[Machine, Desk], service_group: Path
) -> None:
    pc, desk = machine
    assert pc.service is not None
    pc.service.terminate()
    assert pc.service.wait(20) is not None
    argv = [PY, "-m", "allowhelp.agent.cli", "run", "--system", "--config", str(pc.config)]
    service = pc.service = _in_group(service_group, argv, pc.root / "service.log")
    wait_for(lambda: pc.agent_row(desk.broker)["online"], 20, "the service in its group")
    # what a technician left running from an admin shell (nohup apt-get ... &)
    stray = _in_group(service_group, ["sleep", "600"], pc.root / "stray.log")
    try:
        wait_for(lambda: str(stray.pid) in service_group.read_text().split(), 10, "the stray")
        (pc.config / UPGRADED_FILE).touch()
        wait_for(
            lambda: "waiting for what runs in the service's group" in _service_log(pc),
            CHECK_EVERY * 3,
            "the service to say what it waits for",
        )
        assert str(stray.pid) in _service_log(pc)
        time.sleep(CHECK_EVERY + 1)  # one more check goes by: still waiting
        assert service.poll() is None and stray.poll() is None
    finally:
        stray.kill()
        stray.wait(10)
    assert service.wait(CHECK_EVERY * 3) == 0, _service_log(pc)[-2000:]


@pytest.mark.parametrize(
    ("unit", "inside"),
    [
        (SERVICE_UNIT, True),  # root's shell: the machine service's own group
        ("allowhelp-agent-session.service", True),  # the user's shell, root through sudo
        ("user-terminal.scope", False),  # the user's own terminal: not a help session
    ],
)
def test_the_postinst_knows_a_technicians_shell_by_its_group(unit: str, inside: bool) -> None:
    if not os.access(SYSTEMD_GROUPS, os.W_OK):
        pytest.skip(f"{SYSTEMD_GROUPS} cannot be written here")
    text = POSTINST.read_text()
    start = text.index("inside_a_help_session() {")
    function = text[start : text.index("\n}\n", start) + 3]
    group = SYSTEMD_GROUPS / f"ahpostinst-{os.getpid()}" / unit
    group.mkdir(parents=True)
    try:
        script = f'echo $$ > "{group}/cgroup.procs"\n{function}inside_a_help_session'
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    finally:
        group.rmdir()
        group.parent.rmdir()
    assert (done.returncode == 0) is inside, done.stderr
