"""A real headless GNOME for the portal engine's tests, as a local user.

In a private D-Bus session (``dbus-run-session``) of the test user: pipewire,
wireplumber, ``mutter --headless --wayland --no-x11 --virtual-monitor
1024x768``, and foot as a window on it; xdg-desktop-portal and its GNOME back
end are started by D-Bus activation when first asked. ``session_env`` is what
the user's session helper gets, as GNOME's session would give it. GNOME's own
screen-sharing dialog is answered by ``answer`` (``gnome_dialog.py``: keys
through mutter's RemoteDesktop API, a test-only trick).
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

GNOME_SIZE = (1024, 768)
NEEDED = ("mutter", "pipewire", "wireplumber", "dbus-run-session", "gst-launch-1.0", "foot")
SYSTEM_PY = "/usr/bin/python3"
DBUS_RUN = ("dbus-run-session", "--", "bash")
DIALOG = Path(__file__).with_name("gnome_dialog.py")
CAN_RUN_GNOME = (
    all(shutil.which(p) for p in NEEDED) and Path("/usr/libexec/xdg-desktop-portal-gnome").exists()
)
WHY_NO_GNOME = (
    "needs mutter, pipewire, wireplumber, xdg-desktop-portal-gnome (scripts/install test)"
)
SESSION = """
set -u
export XDG_SESSION_TYPE=wayland XDG_CURRENT_DESKTOP=GNOME
cd "$XDG_RUNTIME_DIR"
pipewire > pipewire.log 2>&1 &
until [ -S pipewire-0 ]; do sleep 0.05; done
wireplumber > wireplumber.log 2>&1 &
mutter --headless --wayland --no-x11 {virtual_monitors} > mutter.log 2>&1 &
until [ -S wayland-0 ]; do sleep 0.05; done
export WAYLAND_DISPLAY=wayland-0
dbus-update-activation-environment WAYLAND_DISPLAY XDG_CURRENT_DESKTOP XDG_SESSION_TYPE \\
    XDG_RUNTIME_DIR
foot > foot.log 2>&1 &
echo "$DBUS_SESSION_BUS_ADDRESS" > bus.part && mv bus.part bus
wait
"""


@dataclass
class GnomeDesktop:
    user: str
    runtime: Path
    proc: subprocess.Popen[bytes]
    bus: str = ""

    def session_env(self) -> tuple[str, ...]:
        return (
            f"XDG_RUNTIME_DIR={self.runtime}",
            "WAYLAND_DISPLAY=wayland-0",
            "XDG_SESSION_TYPE=wayland",
            "XDG_CURRENT_DESKTOP=GNOME",
            f"DBUS_SESSION_BUS_ADDRESS={self.bus}",
        )

    def answer(self, how: str) -> subprocess.CompletedProcess[str]:
        """Press keys in GNOME's dialog (``share`` or ``decline``), as the user."""
        argv = ["runuser", "-u", self.user, "--", "env", "-i", "PATH=/usr/bin:/bin"]
        argv += [f"DBUS_SESSION_BUS_ADDRESS={self.bus}", SYSTEM_PY, str(DIALOG), how]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        """A program of the user's in this session (e.g. a window), output to a log."""
        env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME=/home/{self.user}", *self.session_env()]
        with (self.runtime / "started.log").open("ab") as log:
            return subprocess.Popen(
                ["runuser", "-u", self.user, "--", *env, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.runtime / name).read_text(errors="replace")[-3000:]
        return ""


def remove_runtime(runtime: Path) -> None:
    """A test desktop's runtime folder, with the document portal's FUSE mount in it
    (``doc``, which outlives the session's processes; rmtree cannot enter it)."""
    mounted = f" {runtime / 'doc'} "
    if mounted in Path("/proc/mounts").read_text():  # os.path.ismount cannot stat it
        subprocess.run(["umount", "-l", mounted.strip()], check=False, capture_output=True)
    shutil.rmtree(runtime, ignore_errors=True)


@contextlib.contextmanager
def gnome_desktop(
    user: str, monitors: tuple[tuple[int, int], ...] = (GNOME_SIZE,)
) -> Iterator[GnomeDesktop]:
    """``monitors``: one ``--virtual-monitor WxH`` each (mutter lays them out left to right)."""
    account = pwd.getpwnam(user)
    runtime = Path(tempfile.mkdtemp(prefix=f"ahgn-{account.pw_uid}-", dir="/tmp"))
    os.chown(runtime, account.pw_uid, account.pw_gid)
    os.chmod(runtime, 0o700)
    script = runtime / "session.sh"
    virtual = " ".join(f"--virtual-monitor {w}x{h}" for w, h in monitors)
    script.write_text(SESSION.format(virtual_monitors=virtual))
    os.chown(script, account.pw_uid, account.pw_gid)
    env = [f"HOME={account.pw_dir}", f"XDG_RUNTIME_DIR={runtime}", "PATH=/usr/bin:/bin"]
    with (runtime / "session.log").open("wb") as log:
        proc = subprocess.Popen(
            ["runuser", "-u", user, "--", "env", "-i", *env, *DBUS_RUN, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    desktop = GnomeDesktop(user, runtime, proc)
    try:
        bus_file = runtime / "bus"
        wait_for(bus_file.exists, 60, "the GNOME session to come up")
        desktop.bus = bus_file.read_text().strip()
        yield desktop
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        subprocess.run(["pkill", "-KILL", "-u", user], check=False, capture_output=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        remove_runtime(runtime)
