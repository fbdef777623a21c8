"""A real wlroots desktop for the screen tests: sway headless with foot, as a local user.

sway refuses root, so it runs as a test user (``runuser``) in a runtime folder
made here (0700, theirs), on the headless backend with the pixman renderer (no
GPU). Its only client is foot running bash: keys that reach it run commands.
``session_env`` is what that user's session helper gets, as a display manager
would give it: WAYLAND_DISPLAY, XDG_RUNTIME_DIR, XDG_SESSION_TYPE, SWAYSOCK.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import wait_for

SWAY_SIZE = (1024, 768)
# A second headless output (``second_output``), right of the first, all one colour.
SECOND_SIZE = (800, 600)
SECOND_COLOUR = (0x20, 0x40, 0xC0)
CAN_RUN_SWAY = all(shutil.which(p) for p in ("sway", "wayvnc", "foot", "swaymsg"))
WHY_NO_SWAY = "needs sway, wayvnc and foot (scripts/install test)"


@dataclass
class SwayDesktop:
    user: str
    runtime: Path
    proc: subprocess.Popen[bytes]
    display: str = ""
    swaysock: str = ""

    def session_env(self) -> tuple[str, ...]:
        return (
            f"XDG_RUNTIME_DIR={self.runtime}",
            f"WAYLAND_DISPLAY={self.display}",
            "XDG_SESSION_TYPE=wayland",
            "XDG_CURRENT_DESKTOP=sway",
            f"SWAYSOCK={self.swaysock}",
        )

    def as_user(self, *env: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", "env", *env]

    def foot_running(self) -> bool:
        done = subprocess.run(
            [*self.as_user(f"SWAYSOCK={self.swaysock}"), "swaymsg", "-t", "get_tree", "-r"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return '"app_id": "foot"' in done.stdout

    def log(self) -> str:
        return (self.runtime / "sway.log").read_text(errors="replace")[-3000:]


def _socket(runtime: Path, pattern: str) -> str:
    found = [p for p in runtime.glob(pattern) if not p.name.endswith(".lock")]
    return str(found[0]) if found else ""


@contextlib.contextmanager
def sway_desktop(user: str, *, second_output: bool = False) -> Iterator[SwayDesktop]:
    """sway + foot as ``user`` until the block ends; every process of it ended after.
    ``second_output``: a second monitor, HEADLESS-2 (SECOND_SIZE, SECOND_COLOUR)."""
    account = pwd.getpwnam(user)
    runtime = Path(tempfile.mkdtemp(prefix=f"ahwl-{account.pw_uid}-", dir="/tmp"))
    os.chown(runtime, account.pw_uid, account.pw_gid)
    os.chmod(runtime, 0o700)
    width, height = SWAY_SIZE
    config = runtime / "sway.conf"
    lines = [f"output HEADLESS-1 resolution {width}x{height} position 0 0"]
    if second_output:
        colour = "#" + "".join(f"{part:02x}" for part in SECOND_COLOUR)
        second = "{}x{}".format(*SECOND_SIZE)
        lines.append(f"output HEADLESS-2 resolution {second} position {width} 0")
        lines.append(f"output HEADLESS-2 bg {colour} solid_color")
        lines.append("focus output HEADLESS-1")
    config.write_text("\n".join([*lines, "exec foot", ""]))
    os.chown(config, account.pw_uid, account.pw_gid)
    env = [
        f"HOME={account.pw_dir}",
        f"XDG_RUNTIME_DIR={runtime}",
        "PATH=/usr/bin:/bin",
        "WLR_BACKENDS=headless",
        "WLR_LIBINPUT_NO_DEVICES=1",
        "WLR_RENDERER=pixman",
        *(["WLR_HEADLESS_OUTPUTS=2"] if second_output else []),
    ]
    with (runtime / "sway.log").open("wb") as log:
        proc = subprocess.Popen(
            ["runuser", "-u", user, "--", "env", "-i", *env, "sway", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    desktop = SwayDesktop(user, runtime, proc)
    try:
        wait_for(lambda: _socket(runtime, "wayland-*"), 30, "sway's Wayland socket")
        desktop.display = Path(_socket(runtime, "wayland-*")).name
        desktop.swaysock = wait_for(lambda: _socket(runtime, "sway-ipc.*"), 30, "sway's IPC")
        wait_for(desktop.foot_running, 30, "foot on the sway desktop")
        yield desktop
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        subprocess.run(["pkill", "-KILL", "-u", user], check=False, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)
