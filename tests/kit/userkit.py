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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machinekit import REPO, SYSTEM_PY

from harness import Agent, wait_for

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


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def user_path(user: str, *parts: str) -> Path:
    return Path("/home", user, *parts)
