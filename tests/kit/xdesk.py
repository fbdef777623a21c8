"""A virtual X display for tests: Xvfb, windows found and clicked with xdotool, screenshots.

Everything waits on observable facts (a socket, a window mapped or gone) with
bounded deadlines. Buttons are clicked by coordinates computed from the
window's geometry: the right-most button sits at the bottom-right corner in
zenity (GTK puts OK last) and in the Tk window alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
X11_TOOLS = ("Xvfb", "xdotool", "import")
RETRY_AFTER = 2.0


def missing_tools() -> list[str]:
    return [tool for tool in X11_TOOLS if shutil.which(tool) is None]


@dataclass
class Xvfb:
    display: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, first: int = 90, last: int = 200) -> Xvfb:
        """The first free display number; a lost race for a number tries the next."""
        for number in range(first, last):
            sock = Path(f"/tmp/.X11-unix/X{number}")
            if sock.exists() or Path(f"/tmp/.X{number}-lock").exists():
                continue
            proc = subprocess.Popen(
                ["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if _listening(proc, sock):
                return cls(f":{number}", proc)
        raise AssertionError("no free X display number")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
        env["DISPLAY"] = self.display
        return env

    def run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def windows(self, name: str) -> list[str]:
        """Mapped windows whose name matches the regular expression ``name``."""
        return self.run("xdotool", "search", "--onlyvisible", "--name", name).stdout.split()

    def wait_window(self, name: str, timeout: float = 15) -> str:
        found: list[str] = wait_for(lambda: self.windows(name), timeout, f"window {name!r}")
        return found[0]

    def wait_gone(self, name: str, timeout: float = 10) -> None:
        wait_for(lambda: not self.windows(name), timeout, f"window {name!r} to close")

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        done = self.run("xdotool", "getwindowgeometry", "--shell", window)
        values = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def pid(self, window: str) -> int:
        done = self.run("xdotool", "getwindowpid", window)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    def click(self, x: int, y: int) -> None:
        done = self.run("xdotool", "mousemove", str(x), str(y), "click", "1")
        assert done.returncode == 0, done.stderr

    def key(self, window: str, *keys: str) -> None:
        done = self.run("xdotool", "windowfocus", window, "key", *keys)
        assert done.returncode == 0, done.stderr

    def click_button(self, window: str, done: Callable[[], Any], timeout: float = 15) -> Any:
        """Click the right-most button until ``done()`` is truthy."""
        x, y, width, height = self.geometry(window)
        return self._until(
            window, lambda: self.click(x + width - 30, y + height - 25), done, timeout
        )

    def press(
        self, window: str, keys: list[str], done: Callable[[], Any], timeout: float = 15
    ) -> Any:
        """Focus ``window`` and press ``keys`` until ``done()`` is truthy."""
        return self._until(window, lambda: self.key(window, *keys), done, timeout)

    def _until(
        self, window: str, act: Callable[[], None], done: Callable[[], Any], timeout: float
    ) -> Any:
        """Act again only while the window is still there (and after a pause), so an
        action that worked is never repeated onto whatever window opens next."""
        act()
        last = [time.monotonic()]

        def check() -> Any:
            result = done()
            late = time.monotonic() - last[0] > RETRY_AFTER
            if not result and late and window in self.windows("."):
                act()
                last[0] = time.monotonic()
            return result

        return wait_for(check, timeout, "the window to take the input", step=0.5)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        done = self.run("import", "-window", "root", str(path), timeout=30)
        assert done.returncode == 0, done.stderr
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


def _listening(proc: subprocess.Popen[bytes], sock: Path) -> bool:
    wait_for(lambda: proc.poll() is not None or sock.exists(), 10, "Xvfb to listen")
    return proc.poll() is None


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def alive(pid: int) -> bool:
    """Running and not a zombie. A process that exits between the open and the
    read of its status file makes the read fail with ESRCH: that is gone too."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "State:\tZ" not in status
