"""The PC's own say on fleet jobs: ``policy.toml`` in the machine folder.

Jobs are off unless the PC's administrator installed this file (with the
package, by hand, by their configuration management), e.g.::

    [fleet]
    enabled = true
    allow = ["packages", "script"]
    # apt_config = "/etc/allowhelp/agent/apt.conf"   # APT_CONFIG for package jobs

The broker cannot write it: nothing the broker sends is ever written here, and
the file is read again for every job, so switching it off takes effect at
once. A file anyone but root could change is not believed (treated as off,
and the job's result says why).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from allowhelp.protocol.jobs import ACTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # the agent runs on Python 3.10 too (Ubuntu 22.04): the same parser, backported
    import tomli as tomllib

POLICY_FILE = "policy.toml"
_KEYS = {"enabled", "allow", "apt_config"}


@dataclass(frozen=True)
class FleetPolicy:
    """What this PC allows; ``problem`` says why jobs are off when they are."""

    enabled: bool = False
    allow: tuple[str, ...] = ()
    apt_config: str = ""
    problem: str = ""

    def refusal(self, action: str) -> str:
        """Why a job of ``action`` may not run here, or "" when it may."""
        if self.problem:
            return self.problem
        if not self.enabled:
            return "fleet jobs are not enabled on this PC (policy.toml [fleet] enabled = true)"
        if action not in self.allow:
            return f"this PC's policy does not allow {action} jobs"
        return ""

    @classmethod
    def load(cls, folder: Path) -> FleetPolicy:
        path = folder / POLICY_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return cls(problem=f"this PC has no fleet policy ({path}): jobs are off")
        except OSError as exc:
            return cls(problem=f"cannot read {path}: {exc.strerror or exc}: jobs are off")
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return cls(problem=f"{path} may be changed by others than root: jobs are off")
            try:
                raw = tomllib.loads(handle.read(64 * 1024).decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                return cls(problem=f"{path} is not valid TOML ({exc}): jobs are off")
        return cls.parse(raw, path)

    @classmethod
    def parse(cls, raw: dict[str, object], path: Path) -> FleetPolicy:
        fleet = raw.get("fleet", {})
        if not isinstance(fleet, dict):
            return cls(problem=f"{path}: [fleet] must be a table: jobs are off")
        unknown = sorted(set(fleet) - _KEYS)
        if unknown:
            return cls(problem=f"{path}: unknown setting [fleet] {unknown[0]}: jobs are off")
        enabled = fleet.get("enabled", False)
        allow = fleet.get("allow", [])
        apt_config = fleet.get("apt_config", "")
        if not isinstance(enabled, bool):
            return cls(problem=f"{path}: [fleet] enabled must be true or false: jobs are off")
        if not isinstance(allow, list) or any(a not in ACTIONS for a in allow):
            return cls(
                problem=f"{path}: [fleet] allow must list some of {', '.join(ACTIONS)}: "
                "jobs are off"
            )
        if not isinstance(apt_config, str) or (apt_config and not apt_config.startswith("/")):
            return cls(problem=f"{path}: [fleet] apt_config must be an absolute path: jobs are off")
        return cls(enabled=enabled, allow=tuple(allow), apt_config=apt_config)
