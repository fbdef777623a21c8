"""A PC with the machine service: real local users, their helpers and CLI, as those users.

The users are made with ``useradd`` and removed after (``local_users``). Each
user's commands run through ``runuser`` with the system Python: root's own
interpreter (pyenv) is in a folder other users cannot enter, and the session
helper needs neither asyncssh nor cryptography anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import ADMIN, ADMIN_PW, PY, Broker, Desk, Fleet, agent_cli, wait_for

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"
CAN_RUN = (
    os.geteuid() == 0 and shutil.which("useradd") is not None and os.access(SYSTEM_PY, os.X_OK)
)
WHY_NOT = "needs root, useradd and the system Python"


def userdel(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
    subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


@contextmanager
def local_users(*names: str) -> Iterator[None]:
    for name in names:
        userdel(name)
        made = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", name], capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, made.stderr
    try:
        yield
    finally:
        for name in names:
            userdel(name)


@contextmanager
def passable_folder() -> Iterator[Path]:
    """A folder under /tmp the users may pass through (pytest's own is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="ahsys-", dir="/tmp"))
    os.chmod(root, 0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Machine:
    """The machine service of ``config`` and the users' helpers."""

    root: Path
    config: Path
    service: subprocess.Popen[bytes] | None = None
    helpers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    run_flags: tuple[str, ...] = ()  # more of ``run --system``'s flags (``--idle doorbell``)

    def start_service(self) -> None:
        with (self.root / "service.log").open("ab") as log:
            self.service = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "allowhelp.agent.cli",
                    "run",
                    "--system",
                    "--config",
                    str(self.config),
                    *self.run_flags,
                    "--reconnect-cap",
                    "1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        sock = self.config / "run" / "agent.sock"
        wait_for(sock.exists, 20, "the helper socket")

    def as_user(self, user: str, *args: str, env: tuple[str, ...] = ()) -> list[str]:
        base = ["PATH=/usr/bin:/bin", f"HOME=/home/{user}", f"PYTHONPATH={REPO}", "LANG=C.UTF-8"]
        return ["runuser", "-u", user, "--", "env", "-i", *base, *env, SYSTEM_PY, *args]

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.as_user(user, "-m", "allowhelp.agent.cli", *args, "--config", str(self.config))
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    def pending(self, user: str) -> list[dict[str, Any]]:
        done = self.cli(user, "pending", "--json")
        assert done.returncode == 0, done.stderr
        found: list[dict[str, Any]] = json.loads(done.stdout)
        return found

    def allowed_screen(
        self, desk: Desk, user: str, *, view_only: bool, reason: str, **extra: Any
    ) -> str:
        """A screen session ``desk`` asks for (``extra``: e.g. ``monitor``), allowed by
        ``user`` at the PC once the prompt is in their session: its id, active."""
        answer = desk.request(self.agent_id, kind="screen", reason=reason, **extra)
        assert answer.status_code == 201, answer.text
        session_id: str = answer.json()["id"]
        wait_for(
            lambda: any(p["session_id"] == session_id for p in self.pending(user)),
            15,
            "the prompt in the user's session",
        )
        done = self.cli(user, "allow", *(["--view-only"] if view_only else []), session_id)
        assert done.returncode == 0, done.stderr
        assert desk.wait_state(session_id, "active")["view_only"] is view_only
        return session_id

    def agent_row(self, broker: Broker) -> dict[str, Any]:
        """This PC's row in ``broker``'s agent list, as an admin sees it."""
        rows = broker.agents(ADMIN, ADMIN_PW)
        return next(a for a in rows if a["id"] == self.agent_id)

    def signed_in_here(self) -> str:
        """Who the machine service says is signed in (asked as root)."""
        from allowhelp.agent.machineclient import machine_call
        from allowhelp.agent.machinesocket import machine_socket

        return str(machine_call(machine_socket(self.config), {"op": "status"})["signed_in"])

    def start_helper(self, user: str, env: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        argv = self.as_user(
            user,
            "-m",
            "allowhelp.agent.cli",
            "session",
            "--prompt",
            "none",
            "--config",
            str(self.config),
            env=env,
        )
        with (self.root / f"helper-{user}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.helpers[user] = proc
        try:
            wait_for(lambda: self.signed_in_here() == user, 20, f"{user} to be signed in")
        except AssertionError:
            said = (self.root / f"helper-{user}.log").read_text()
            served = (self.root / "service.log").read_text()[-3000:]
            raise AssertionError(f"helper log:\n{said}\nservice log:\n{served}") from None
        return proc

    def stop_helper(self, user: str, sig: int = signal.SIGTERM) -> None:
        proc = self.helpers.pop(user)
        # runuser passes SIGTERM on to the helper; SIGKILL must hit the helper itself
        os.kill(child_of(proc.pid) if sig == signal.SIGKILL else proc.pid, sig)
        proc.wait(15)

    def stop(self) -> None:
        for user in list(self.helpers):
            self.stop_helper(user)
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            self.service.wait(20)

    @property
    def agent_id(self) -> str:
        return str(json.loads((self.config / "agent.json").read_text())["agent_id"])


def enroll_system(broker: Broker, config: Path) -> Path:
    """``enroll --system`` with ``broker`` into ``config`` (a machine service's folder)."""
    enrolled = agent_cli("enroll", "--system", broker.token(), "--config", str(config))
    assert enrolled.returncode == 0, enrolled.stderr
    return config


@contextmanager
def machine_service(
    broker: Broker, root: Path, user: str, env: tuple[str, ...]
) -> Iterator[Machine]:
    """A PC enrolled with ``enroll --system`` in ``root``, its machine service running
    and ``user``'s session helper started with their desktop's ``env``; stopped after."""
    machine = Machine(root, enroll_system(broker, root / "machine"))
    try:
        machine.start_service()
        machine.start_helper(user, env=env)
        yield machine
    finally:
        machine.stop()


@contextmanager
def stolen_machine(folder: Path, *users: str) -> Iterator[tuple[Broker, Machine]]:
    """A machine service enrolled with a broker that is then stopped, so a rogue
    holding its tunnel key (``roguekit.stolen_key_connection``) takes its port; the
    local ``users`` made for it. Everything stopped and removed after."""
    fleet = Fleet(folder)
    with local_users(*users), passable_folder() as root:
        machine = Machine(root, root / "machine")
        try:
            broker = fleet.broker().start()
            enroll_system(broker, machine.config)
            broker.stop()
            machine.start_service()
            yield broker, machine
        finally:
            machine.stop()
            fleet.close()
