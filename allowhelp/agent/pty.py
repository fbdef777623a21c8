"""The user's login shell on a pseudo-terminal, bridged to one SSH channel.

Flow control is end to end: when the SSH channel's send buffer fills (the
broker or the browser is slower than ``yes``), the agent stops reading the
PTY, the kernel's PTY buffer fills, and the shell blocks. Nothing grows
without bound, and Ctrl-C still reaches the PTY because input has its own path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import signal
import struct
import subprocess
import termios
from collections.abc import Callable

from .fdbridge import FdBridge, Output

log = logging.getLogger(__name__)

MIN_COLS, MAX_COLS = 2, 1000
MIN_ROWS, MAX_ROWS = 1, 500
KEEP_ENV = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "PATH",
    "DISPLAY",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
)


def clamp_size(cols: int, rows: int) -> tuple[int, int]:
    return min(max(cols, MIN_COLS), MAX_COLS), min(max(rows, MIN_ROWS), MAX_ROWS)


def shell_environment(term: str) -> tuple[list[str], dict[str, str], str]:
    """A login shell of the user the agent runs as, in their home, and a clean env."""
    entry = pwd.getpwuid(os.getuid())
    shell = entry.pw_shell if entry.pw_shell and os.path.exists(entry.pw_shell) else "/bin/sh"
    env = {key: os.environ[key] for key in KEEP_ENV if key in os.environ}
    env.update(
        HOME=entry.pw_dir,
        USER=entry.pw_name,
        LOGNAME=entry.pw_name,
        SHELL=shell,
        TERM=term if term.startswith("xterm") else "xterm-256color",
    )
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    home = entry.pw_dir if os.path.isdir(entry.pw_dir) else "/"
    return [shell, "-l"], env, home


def _become_terminal_owner() -> None:  # pragma: no cover - runs in the child
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    def __init__(
        self, output: Output, *, term: str, cols: int, rows: int, on_exit: Callable[[int], None]
    ) -> None:
        self._output = output
        self._on_exit = on_exit
        argv, env, home = shell_environment(term)
        self._master, slave = os.openpty()
        self.resize(cols, rows)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=home,
                env=env,
                start_new_session=True,
                preexec_fn=_become_terminal_owner,  # noqa: PLW1509 - needs the new session
                close_fds=True,
            )
        finally:
            os.close(slave)
        self._bridge = FdBridge(self._master, output, self._finish)
        log.info("shell pid=%d started (%s)", self._proc.pid, argv[0])

    @property
    def pid(self) -> int:
        return self._proc.pid

    def pause(self) -> None:
        """The channel is full: stop reading so the shell blocks on its own output."""
        self._bridge.pause()

    def resume(self) -> None:
        self._bridge.resume()

    def write(self, data: bytes) -> None:
        self._bridge.write(data)

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = clamp_size(cols, rows)
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _finish(self) -> None:
        status = self.close()
        self._on_exit(status)

    def close(self) -> int:
        """Hang up the terminal and make sure nothing started here survives."""
        if self._bridge.closed:
            return self._proc.returncode if self._proc.returncode is not None else -1
        self._bridge.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGHUP)
        with contextlib.suppress(OSError):
            os.close(self._master)
        try:
            status = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            status = self._proc.wait(timeout=5)
        log.info("shell pid=%d ended with status %d", self._proc.pid, status)
        return status
