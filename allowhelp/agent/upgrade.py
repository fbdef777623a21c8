"""The machine service restarts into a new version once nobody is being helped.

A package upgrade run from inside a help session (a technician's root shell, or a
fleet job that installs the new ``allowhelp-agent``) cannot restart the service at
once: that would end the session it runs in. The package's postinst then leaves a
mark in the service's folder (``UPGRADED_FILE``) instead, and this watch stops the
service at the first moment it is idle: no prompt waiting, no session granted, no
fleet job running, and nothing else left in the service's control group (a
technician's ``nohup apt-get ... &`` or tmux from an admin shell already ended:
stopping the service would kill them, ``KillMode=control-group``). systemd
(``Restart=always``) starts the new version, which clears the mark. Until then the
running service keeps the code it loaded; a session module that no longer fits it
fails that session alone (``channels.py``).

Only root can write the folder (0700), so the mark is no lever for anybody else;
a mark that cannot be read or removed is logged and left to the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

UPGRADED_FILE = "upgraded"
CHECK_EVERY = 5.0  # seconds: the mark is looked at this often, and after it is seen
SERVICE_UNIT = "allowhelp-agent.service"  # packaging/systemd's unit: its control group
CGROUPS = Path("/sys/fs/cgroup")


def _procs_file(controllers: str, path: str, root: Path) -> Path:
    """Where a group's ``cgroup.procs`` is: cgroup v2 (alone, or beside v1 as
    ``unified``) or systemd's own v1 hierarchy (``name=systemd``)."""
    if controllers == "name=systemd":
        base = root / "systemd"
    else:
        base = root / "unified" if (root / "unified").is_dir() else root
    return base / path.lstrip("/") / "cgroup.procs"


def strays(
    own: int | None = None, *, cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUPS
) -> list[int]:
    """The processes in the service's control group besides the service itself: what a
    stop would kill. [] where the service is not in its unit's group (not under systemd)."""
    own = os.getpid() if own is None else own
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not (controllers in ("", "name=systemd") and path.endswith("/" + SERVICE_UNIT)):
            continue
        try:
            pids = [int(pid) for pid in _procs_file(controllers, path, root).read_text().split()]
        except (OSError, ValueError):
            continue
        return [pid for pid in pids if pid != own]
    return []


def clear_mark(folder: Path) -> None:
    """At start: this process runs the installed version, so the mark is spent."""
    with contextlib.suppress(FileNotFoundError):
        (folder / UPGRADED_FILE).unlink()


class UpgradeWatch:
    """Sets ``stop`` once the mark exists and ``busy()`` says nobody needs the service."""

    def __init__(
        self,
        folder: Path,
        busy: Callable[[], bool],
        *,
        every: float = CHECK_EVERY,
        left_behind: Callable[[], list[int]] = strays,
    ) -> None:
        if every <= 0:
            raise ValueError("the upgrade check interval must be positive")
        self.mark = folder / UPGRADED_FILE
        self._busy = busy
        self._left_behind = left_behind
        self._every = every
        self._told: tuple[int, ...] = ()
        self.restarting = False

    def _waits(self) -> bool:
        """Somebody is being helped, or a stop would kill what a session left running."""
        if self._busy():
            return True
        left = tuple(self._left_behind())
        if left and left != self._told:
            log.info(
                "the package was upgraded; waiting for what runs in the service's group "
                "to end before restarting (pids %s)",
                " ".join(map(str, left)),
            )
        self._told = left
        return bool(left)

    def _marked(self) -> bool:
        try:
            return self.mark.exists()
        except OSError as exc:
            log.warning("cannot look for the upgrade mark %s: %s", self.mark, exc)
            return False

    async def run(self, stop: asyncio.Event) -> None:
        waited = False  # the mark was seen while somebody was being helped
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every)
            if stop.is_set() or not self._marked():
                continue
            if self._waits():
                waited = True
                continue
            self.restarting = True
            log.info(
                "the package was upgraded%s; nobody is being helped now: "
                "stopping so that the new version starts",
                " during a help session" if waited else "",
            )
            stop.set()
