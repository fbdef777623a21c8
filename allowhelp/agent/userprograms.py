"""The programs a session helper starts for the machine service, as its user.

A shell: the user's login shell on a new PTY (``pty.shell_environment``: the
account's shell, home and a clean environment). A screen: the session's engine
(x11vnc on a socketpair, wayvnc on a socket private to the user, or the test
program), exactly as the per-user agent starts it (``screen.launch_screen``).
Files: sftp-server on a socketpair (``files.files_command``). The helper hands
the PTY master or its socket end to the service and keeps only the process, to
end its group when told (``reaper.end_process_group``) and report how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import termios
from collections.abc import Callable, Mapping

from allowhelp.agent.files import explain_files_exit, files_command, files_environment
from allowhelp.agent.pty import (
    HANGUP_SIGNALS,
    SIGNAL_GRACE,
    _become_terminal_owner,
    clamp_size,
    shell_environment,
)
from allowhelp.agent.reaper import end_process_group
from allowhelp.agent.screen import EXIT_PATIENCE, STDERR_TAIL, TERM_GRACE
from allowhelp.agent.screenlaunch import ScreenUnavailable, greeted, launch_screen
from allowhelp.agent.x11vnc import explain_exit

log = logging.getLogger(__name__)


class UserProgram:
    """One started program; ``fd`` is what goes to the service (then closed here)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        fd: int,
        kind: str,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.proc = proc
        self._cleanup = cleanup
        self.fd = fd
        self.kind = kind
        self.greeting = b""  # said to the screen server for the viewer (screen.PairLaunch)
        self._stderr = proc.stderr
        self._tail = bytearray()
        if self._stderr is not None:
            os.set_blocking(self._stderr.fileno(), False)
            asyncio.get_running_loop().add_reader(self._stderr.fileno(), self._read_stderr)
        self.ending: asyncio.Future[int] | None = None

    def _read_stderr(self) -> None:
        """Keep the last words (x11vnc says why it failed on stderr); never let it block."""
        if self._stderr is None:
            return
        while True:
            try:
                data = os.read(self._stderr.fileno(), STDERR_TAIL)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self._stderr.fileno())
                self._stderr.close()
                self._stderr = None
                return
            self._tail += data
            del self._tail[:-STDERR_TAIL]

    def handed_over(self) -> None:
        """The service has the descriptor now: ours goes, so its close hangs up."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1

    def end(self) -> asyncio.Future[int]:
        """End the program's process group (once); the future has its exit status."""
        if self.ending is None:
            self.handed_over()
            if self.kind == "shell":
                self.ending = end_process_group(
                    self.proc, HANGUP_SIGNALS, SIGNAL_GRACE, name="shell"
                )
            else:
                self.ending = end_process_group(
                    self.proc, (signal.SIGTERM,), TERM_GRACE, name="screen", patience=EXIT_PATIENCE
                )
            if self._cleanup is not None:
                cleanup = self._cleanup
                self.ending.add_done_callback(lambda _: cleanup())
        return self.ending

    def error(self, status: int) -> str:
        if self._stderr is not None:
            self._read_stderr()
        if self.kind == "shell" or status == 0:
            return ""
        if self.kind == "files":
            return explain_files_exit(status, bytes(self._tail))
        return explain_exit(status, bytes(self._tail))


def start_shell(term: str, cols: int, rows: int) -> UserProgram:
    argv, env, home = shell_environment(term)
    master, slave = os.openpty()
    try:
        cols, rows = clamp_size(cols, rows)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        proc = subprocess.Popen(
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
    except OSError:
        os.close(master)
        raise
    finally:
        os.close(slave)
    log.info("shell pid=%d started (%s)", proc.pid, argv[0])
    return UserProgram(proc, master, "shell")


async def start_screen(
    env: Mapping[str, str], *, view_only: bool, monitor: str = "", greet: bool = False
) -> UserProgram:
    """The session's screen server (x11vnc on a socketpair, wayvnc on its private socket),
    once its socket answers; ``fd`` is the connected socket. ScreenUnavailable says why not,
    with the server's own last words when it exited."""
    # ScreenUnavailable; ``greet``: the service takes the greeting (``hp.Open.greet``)
    launch = launch_screen(env, view_only=view_only, monitor=monitor, greet=greet)
    program = UserProgram(launch.proc, -1, "screen", cleanup=launch.cleanup)
    log.info("screen pid=%d started (%s)", launch.proc.pid, type(launch).__name__)
    try:
        sock = await launch.connect()
    except RuntimeError as exc:
        status = await program.end()
        raise ScreenUnavailable(program.error(status or 1) or str(exc)) from exc
    except asyncio.CancelledError:
        program.end()
        raise
    program.fd = sock.detach()
    program.greeting = greeted(launch)
    return program


def start_files(env: Mapping[str, str], *, read_only: bool = False) -> UserProgram:
    """sftp-server as this helper's user (FilesUnavailable as root or without one);
    ``read_only`` (-R) for a view-only grant."""
    argv = files_command(read_only=read_only)
    return _on_socketpair(argv, files_environment(env), "files")


def _on_socketpair(argv: list[str], env: dict[str, str], kind: str) -> UserProgram:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        mine.close()
        raise
    finally:
        theirs.close()
    log.info("%s pid=%d started (%s)", kind, proc.pid, os.path.basename(argv[0]))
    return UserProgram(proc, mine.detach(), kind)
