"""The user's login shell on a pseudo-terminal, bridged to one SSH channel.

Flow control is end to end: when the SSH channel's send buffer fills (the
broker or the browser is slower than ``yes``), the agent stops reading the
PTY, the kernel's PTY buffer fills, and the shell blocks. Nothing grows
without bound, and Ctrl-C still reaches the PTY because input has its own path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import re
import signal
import struct
import subprocess
import termios
from collections.abc import Callable

from allowhelp.agent.fdbridge import FdBridge, Output
from allowhelp.agent.reaper import end_process_group

log = logging.getLogger(__name__)

# The shell's group gets SIGHUP, then SIGTERM, each with this grace, then SIGKILL.
HANGUP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
SIGNAL_GRACE = 1.0
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


# The broker asks for xterm-256color; anything else must at least be a plain name.
SAFE_TERM = re.compile(r"xterm[a-z0-9-]{0,32}")


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
        TERM=term if SAFE_TERM.fullmatch(term) else "xterm-256color",
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
        self.ended: asyncio.Future[int] | None = None  # set once the teardown has begun
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
        if self._master < 0:  # closed: its number may be another file's now
            return
        cols, rows = clamp_size(cols, rows)
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _finish(self) -> None:
        """The terminal reached its end (the shell exited): report its real status."""
        if self._bridge.closed:
            return
        self._hang_up().add_done_callback(lambda ended: self._on_exit(ended.result()))

    def close(self) -> int:
        """Hang up the terminal and make sure nothing started here survives.

        Returns at once: the group is ended off the loop (``self.ended``), and
        the status is known here only when the shell is gone already."""
        if not self._bridge.closed:
            self._hang_up()
        return self._proc.returncode if self._proc.returncode is not None else -1

    def _hang_up(self) -> asyncio.Future[int]:
        """SIGHUP, then SIGTERM, then SIGKILL to the shell's group, a grace apart."""
        self._bridge.stop()
        self.ended = end_process_group(self._proc, HANGUP_SIGNALS, SIGNAL_GRACE, name="shell")
        with contextlib.suppress(OSError):
            os.close(self._master)
        self._master = -1
        return self.ended
