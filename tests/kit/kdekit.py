"""A real headless KDE Plasma (KWin) for the portal engine's tests, as a local user.

Its packages come with ``scripts/install test`` (about 740 MB installed); without
them the KDE suite is skipped, saying so. ``ALLOWHELP_KDE=0`` skips it too.

In a private D-Bus session (``dbus-run-session``) of the test user: pipewire,
wireplumber and ``kwin_wayland --virtual`` (1024x768); xdg-desktop-portal and
its KDE back end are started by D-Bus activation when first asked.
``session_env`` is what the user's session helper gets, as Plasma's session
would give it. Windows to type into are zenity entries (``open_entry``): what
the user types there comes out on zenity's stdout when Return is pressed.

KWin is run from a copy in the session's runtime folder: Debian gives
``/usr/bin/kwin_wayland`` the file capability ``cap_sys_resource``, and a
container whose bounding set lacks it cannot execute the file at all
("Operation not permitted"); the copy is the same program without it (its
name must stay ``kwin_wayland``: KWin's Qt platform plugin checks it).

KDE's screen-sharing dialog is answered by ``answer`` (``kde_dialog.py``: the
pointer and keys through KDE's own RemoteDesktop portal, a test-only trick).
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

from gnomekit import remove_runtime

from harness import wait_for

KDE_SIZE = (1024, 768)
KWIN = Path("/usr/bin/kwin_wayland")
PORTAL_KDE = Path("/usr/lib/x86_64-linux-gnu/libexec/xdg-desktop-portal-kde")
SYSTEM_DIALOG = Path("/usr/lib/x86_64-linux-gnu/qt5/qml/org/kde/plasma/workspace/dialogs")
NEEDED = ("pipewire", "wireplumber", "dbus-run-session", "gst-launch-1.0", "zenity")
SYSTEM_PY = "/usr/bin/python3"
DBUS_RUN = ("dbus-run-session", "--", "bash")
DIALOG = Path(__file__).with_name("kde_dialog.py")
DISPLAY = "wayland-kde"
OPTED_IN = os.environ.get("ALLOWHELP_KDE", "") != "0"
WHY_NOT_OPTED_IN = "the KDE suite is switched off (ALLOWHELP_KDE=0)"
CAN_RUN_KDE = (
    all(shutil.which(p) for p in NEEDED)
    and KWIN.exists()
    and PORTAL_KDE.exists()
    and SYSTEM_DIALOG.is_dir()
)
WHY_NO_KDE = "needs kwin-wayland, xdg-desktop-portal-kde, plasma-workspace (scripts/install test)"
SESSION = """
set -u
export XDG_SESSION_TYPE=wayland XDG_CURRENT_DESKTOP=KDE KDE_FULL_SESSION=true
cd "$XDG_RUNTIME_DIR"
pipewire > pipewire.log 2>&1 &
until [ -S pipewire-0 ]; do sleep 0.05; done
wireplumber > wireplumber.log 2>&1 &
./kwin_wayland --virtual --no-lockscreen --socket {display} --width {width} --height {height} \\
    > kwin.log 2>&1 &
until [ -S {display} ]; do sleep 0.05; done
export WAYLAND_DISPLAY={display}
dbus-update-activation-environment WAYLAND_DISPLAY XDG_CURRENT_DESKTOP XDG_SESSION_TYPE \\
    XDG_RUNTIME_DIR KDE_FULL_SESSION
echo "$DBUS_SESSION_BUS_ADDRESS" > bus.part && mv bus.part bus
wait
"""


@dataclass
class KdeDesktop:
    user: str
    runtime: Path
    proc: subprocess.Popen[bytes]
    bus: str = ""

    def session_env(self) -> tuple[str, ...]:
        return (
            f"XDG_RUNTIME_DIR={self.runtime}",
            f"WAYLAND_DISPLAY={DISPLAY}",
            "XDG_SESSION_TYPE=wayland",
            "XDG_CURRENT_DESKTOP=KDE",
            "KDE_FULL_SESSION=true",
            f"DBUS_SESSION_BUS_ADDRESS={self.bus}",
        )

    def _as_user(self, *argv: str) -> list[str]:
        home = pwd.getpwnam(self.user).pw_dir
        return [
            "runuser", "-u", self.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
            f"HOME={home}", *self.session_env(), *argv,
        ]  # fmt: skip

    def answer(self, how: str) -> subprocess.CompletedProcess[str]:
        """``share`` or ``decline`` in KDE's dialog, as the user (exit 1: no dialog yet)."""
        argv = self._as_user(SYSTEM_PY, str(DIALOG), how)
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def window(self, resource_class: str) -> tuple[int, ...] | None:
        """``(x, y, width, height)`` of that application's first window, or None."""
        argv = self._as_user(SYSTEM_PY, str(DIALOG), "geometry", resource_class)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode:
            return None
        return tuple(int(v) for v in done.stdout.split())

    def cursor(self) -> tuple[int, ...] | None:
        """Where KWin has the pointer, ``(x, y)``; None when KWin does not answer."""
        argv = self._as_user(SYSTEM_PY, str(DIALOG), "cursor")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode:
            return None
        return tuple(int(v) for v in done.stdout.split())

    @contextlib.contextmanager
    def entry(self, name: str) -> Iterator[Path]:
        """A zenity entry window with the keyboard focus; the file its text goes to."""
        out = self.runtime / f"{name}.out"
        with out.open("wb") as sink, (self.runtime / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                self._as_user("zenity", "--entry", f"--title={name}", "--text=allowhelp"),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_for(lambda: self.window("zenity") is not None, 30, "zenity's window on KWin")
            yield out
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.runtime / name).read_text(errors="replace")[-3000:]
        return ""


@contextlib.contextmanager
def kde_desktop(user: str) -> Iterator[KdeDesktop]:
    account = pwd.getpwnam(user)
    runtime = Path(tempfile.mkdtemp(prefix=f"ahkde-{account.pw_uid}-", dir="/tmp"))
    os.chown(runtime, account.pw_uid, account.pw_gid)
    os.chmod(runtime, 0o700)
    kwin = runtime / KWIN.name
    shutil.copyfile(KWIN, kwin)  # without its file capability (the module's docstring)
    os.chmod(kwin, 0o755)
    width, height = KDE_SIZE
    script = runtime / "session.sh"
    script.write_text(SESSION.format(display=DISPLAY, width=width, height=height))
    for path in (kwin, script):
        os.chown(path, account.pw_uid, account.pw_gid)
    env = [f"HOME={account.pw_dir}", f"XDG_RUNTIME_DIR={runtime}", "PATH=/usr/bin:/bin"]
    with (runtime / "session.log").open("wb") as log:
        proc = subprocess.Popen(
            ["runuser", "-u", user, "--", "env", "-i", *env, *DBUS_RUN, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    desktop = KdeDesktop(user, runtime, proc)
    try:
        bus_file = runtime / "bus"
        wait_for(bus_file.exists, 60, "the KDE session to come up")
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
