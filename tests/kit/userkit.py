"""A per-user agent run as a real local user (not root), for what must never be root's.

Root's own interpreter (pyenv) is in a folder other users cannot enter, so the
user's agent runs on the system Python (the same 3.11) with this checkout and
its virtualenv's packages on ``PYTHONPATH``: the same code and libraries as
every other test, only as another uid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machinekit import REPO, SYSTEM_PY, local_users, passable_folder

from harness import TECH, TECH_PW, Agent, Broker, Desk, online, staffed_broker, wait_for

SITE = sysconfig.get_paths()["purelib"]


def as_user(user: str, *args: str) -> list[str]:
    env = [
        "PATH=/usr/bin:/bin",
        f"HOME=/home/{user}",
        f"PYTHONPATH={REPO}:{SITE}",
        "LANG=C.UTF-8",
        "PYTHONWARNINGS=ignore",
    ]
    return ["runuser", "-u", user, "--", "env", "-i", *env, SYSTEM_PY, *args]


@dataclass
class UserAgent(Agent):
    user: str = ""

    def __post_init__(self) -> None:
        self.program = as_user(self.user, "-m", "allowhelp.agent.cli")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [*self.program, *args, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def enroll(self, token: str) -> subprocess.CompletedProcess[str]:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        os.chown(self.config.parent, *_ids(self.user))
        return self.cli("enroll", token)

    def wait_pending(self, session_id: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            done = self.cli("pending", "--json")
            assert done.returncode == 0, done.stderr
            found: list[dict[str, Any]] = json.loads(done.stdout)
            return next((p for p in found if p["session_id"] == session_id), None)

        pending: dict[str, Any] = wait_for(find, 20, f"request {session_id}", step=0.2)
        return pending


def allowed_files(broker: Broker, agent: UserAgent, reason: str) -> tuple[Desk, str]:
    """A technician's files session on ``agent``, allowed by its user at the PC:
    the technician's desk (theirs to close) and the session id, active."""
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.request(agent.agent_id, "files", reason)
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    agent.wait_pending(session_id)
    assert agent.cli("allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    return desk, session_id


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def user_path(user: str, *parts: str) -> Path:
    return Path("/home", user, *parts)


@contextmanager
def user_agent_online(
    folder: Path, user: str, broker_args: tuple[str, ...] = ()
) -> Iterator[tuple[Broker, UserAgent]]:
    """A broker with its staff, and ``user``'s own agent (a real local user made for
    the test) enrolled and online, prompts answered from the command line."""
    with (
        local_users(user),
        passable_folder() as root,
        staffed_broker(folder, broker_args=broker_args) as fleet,
    ):
        broker = fleet.brokers[0]
        agent = UserAgent(root / "pc" / "agent", user=user)
        fleet.agents.append(agent)
        enrolled = agent.enroll(broker.token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start("--reconnect-cap", "2", "--prompt", "none")
        wait_for(lambda: online(broker, agent.agent_id), 30, "the user's agent to come online")
        yield broker, agent
