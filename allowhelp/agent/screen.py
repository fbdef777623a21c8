"""The PC's screen for one granted session: ``x11vnc -inetd`` on a socketpair.

x11vnc gets one end of a UNIX socketpair as its stdin and stdout and speaks
RFB on it; the agent bridges the other end to the SSH channel. Nothing
listens: no TCP port, not even on localhost, and no UNIX socket path either.
Flow control is as for the shell: when the channel is full the agent stops
reading the socket, and x11vnc (which only sends what the viewer asked for)
waits.

The x11vnc options, and why:
    -norc              ignore ~/.x11vncrc: a user file must not add -forever or a port
    -inetd             RFB on stdio; x11vnc opens no listening socket
    -display D         the display the agent was started on, never a guess
    -once              exit when the viewer goes (the default; said out loud)
    -nopw              no "running without a password" banner: the SSH tunnel
                       and the consent gate are the access control
    -safer -nocmds     no remote control through the X11VNC_REMOTE property (any
                       X client could otherwise turn view-only off) and no
                       external commands at all
    -noipv6 -nolookup  no sockets to resolve or listen on
    -nonc              no client-side pixel cache: the viewer sees the true size
    -noxdamage         poll the screen: DAMAGE misses updates under compositors
                       (a screen that looks frozen is worse than some CPU)
    -noprimary -nosetprimary
                       only the CLIPBOARD travels (what the user copied), not
                       every text they happen to highlight
    -viewonly -nosel   a view-only grant: no input, no clipboard either way
                       (the broker also drops input, so neither alone is trusted)
Not used: ``-q`` (with -inetd it closes stderr, and stderr is where x11vnc
says why it failed), ``-noshm`` (the X server is local: shared memory is fine).

When the screen cannot be shared the reason is plain: no DISPLAY, a Wayland
session, x11vnc missing, or x11vnc's own last words (``XOpenDisplay failed``).
It goes to the channel's stderr and exit status; the broker ends the session
with that reason and audits it.

Test knob, off by default: ``ALLOWHELP_TEST_SCREEN_COMMAND`` (a command line)
runs that program instead of x11vnc, on the same socketpair, without the X
checks. The test suite uses it to put a hostile VNC server behind the agent.
It is never needed in production and the agent logs a warning when it is set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING

from allowhelp.agent.fdbridge import FdBridge, Output
from allowhelp.agent.reaper import end_process_group
from allowhelp.protocol.text import plain_text

if TYPE_CHECKING:
    from allowhelp.agent.channels import Backend, GatedChannel
    from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

TEST_COMMAND_ENV = "ALLOWHELP_TEST_SCREEN_COMMAND"
X11VNC = "x11vnc"
STDERR_TAIL = 16 * 1024
TERM_GRACE = 2.0
EXIT_PATIENCE = 0.5  # a program that closed its socket is exiting: let it, before SIGTERM
KEEP_ENV = ("DISPLAY", "XAUTHORITY", "HOME", "USER", "LOGNAME", "PATH", "LANG", "LC_ALL")


class ScreenUnavailable(RuntimeError):
    """This PC cannot share its screen; the message says why, for the technician."""


def display_problem(env: Mapping[str, str]) -> str | None:
    """Why there is no X screen to share, in plain words; None when there is one."""
    display = env.get("DISPLAY", "")
    wayland = env.get("XDG_SESSION_TYPE", "").lower() == "wayland" or (
        bool(env.get("WAYLAND_DISPLAY")) and env.get("XDG_SESSION_TYPE", "").lower() != "x11"
    )
    if wayland:
        return (
            "the PC runs a Wayland session; screen sharing needs an X11 (Xorg) session"
            " — the user can pick one at the login screen"
        )
    if not display:
        return "no X display: the agent was started without DISPLAY (no graphical session)"
    return None


def x11vnc_argv(program: str, display: str, *, view_only: bool) -> list[str]:
    argv = [program, "-norc", "-inetd", "-display", display, "-once", "-nopw", "-safer"]
    argv += ["-nocmds", "-noipv6", "-nolookup", "-nonc", "-noxdamage"]
    argv += ["-noprimary", "-nosetprimary"]
    if view_only:
        argv += ["-viewonly", "-nosel"]
    return argv


def screen_command(env: Mapping[str, str], *, view_only: bool) -> list[str]:
    """The program to run for this grant, or ScreenUnavailable with the reason."""
    override = env.get(TEST_COMMAND_ENV, "").strip()
    if override:
        log.warning("%s is set: the screen is %r, not x11vnc", TEST_COMMAND_ENV, override)
        return shlex.split(override)
    problem = display_problem(env)
    if problem:
        raise ScreenUnavailable(problem)
    program = shutil.which(X11VNC, path=env.get("PATH") or os.defpath)
    if program is None:
        raise ScreenUnavailable("x11vnc is not installed on this PC (Debian: apt install x11vnc)")
    return x11vnc_argv(program, env["DISPLAY"], view_only=view_only)


def explain_exit(status: int, stderr: bytes) -> str:
    """x11vnc's failure in one line: its own words when we know them."""
    lines = [plain_text(line, 300) for line in stderr.decode("utf-8", "replace").splitlines()]
    for line in lines:
        if "XOpenDisplay(" in line and "failed" in line:
            display = line[line.index("XOpenDisplay(") :].split(")")[0] + ")"
            return f"x11vnc cannot open the X display ({display} failed): no access to the screen"
    how = f"signal {-status}" if status < 0 else f"status {status}"
    last = next((_untimed(line) for line in reversed(lines) if _untimed(line)), "")
    return f"the screen sharer stopped ({how})" + (f": {last}" if last else "")


def _untimed(line: str) -> str:
    """Drop x11vnc's ``28/11/2026 12:25:58`` prefix."""
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[0].count("/") == 2 and parts[1].count(":") == 2:
        return parts[2].strip()
    return line.strip()


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    kept = {key: env[key] for key in KEEP_ENV if key in env}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


class ScreenProcess:
    """One screen program on a socketpair, bridged to ``output``; a channel Backend."""

    def __init__(
        self,
        output: Output,
        argv: list[str],
        env: Mapping[str, str],
        on_exit: Callable[[int, bytes], None],
    ) -> None:
        self._output = output
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own process group: close() kills it all
                close_fds=True,
            )
        except OSError:
            self._sock.close()
            raise
        finally:
            theirs.close()
        stderr = self._proc.stderr
        if stderr is None:
            raise OSError("no stderr pipe")  # cannot happen with stderr=PIPE
        self._stderr_file: IO[bytes] = stderr
        self._stderr = stderr.fileno()
        os.set_blocking(self._stderr, False)
        self._tail = bytearray()
        self._stderr_closed = False
        self.ended: asyncio.Future[int] | None = None  # set once the teardown has begun
        self._bridge = FdBridge(self._sock.fileno(), output, self._finish)
        self._loop.add_reader(self._stderr, self._stderr_readable)
        log.info("screen pid=%d started (%s)", self._proc.pid, os.path.basename(argv[0]))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _stderr_readable(self) -> None:
        """Keep the last STDERR_TAIL bytes of what x11vnc says; stop at the pipe's end."""
        while not self._stderr_closed:
            try:
                data = os.read(self._stderr, STDERR_TAIL)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stderr()
                return
            self._tail += data
            del self._tail[:-STDERR_TAIL]

    def _close_stderr(self) -> None:
        if not self._stderr_closed:
            self._stderr_closed = True
            self._loop.remove_reader(self._stderr)
            self._stderr_file.close()

    def pause(self) -> None:
        """The channel is full: stop reading, so x11vnc waits on its socket."""
        self._bridge.pause()

    def resume(self) -> None:
        self._bridge.resume()

    def resize(self, cols: int, rows: int) -> None:
        """A screen has no terminal size."""

    def write(self, data: bytes) -> None:
        self._bridge.write(data)

    def _finish(self) -> None:
        """The program closed its end: it is exiting (viewer gone, or it failed).

        It gets EXIT_PATIENCE to exit by itself (its own status, not our
        SIGTERM's); its last words are read once it is gone, then reported."""
        if self._bridge.closed:
            return
        self._bridge.stop()
        self._sock.close()
        self.ended = end_process_group(
            self._proc, (signal.SIGTERM,), TERM_GRACE, name="screen", patience=EXIT_PATIENCE
        )
        self.ended.add_done_callback(self._report)

    def _report(self, ended: asyncio.Future[int]) -> None:
        self._stderr_readable()  # what is left in the pipe, up to its end
        self._close_stderr()
        self._on_exit(ended.result(), bytes(self._tail))

    def close(self) -> int:
        """Stop the program and everything it started; safe to call again.

        Returns at once: the reaper gives x11vnc TERM_GRACE after SIGTERM, then
        SIGKILLs whatever of the group is left (no process survives)."""
        if self._bridge.closed:
            return self._proc.returncode if self._proc.returncode is not None else -1
        self._bridge.stop()
        self._close_stderr()
        self._sock.close()  # x11vnc sees its viewer leave and cleans up (key autorepeat)
        # SIGTERM: x11vnc restores the X server's settings before it exits.
        self.ended = end_process_group(self._proc, (signal.SIGTERM,), TERM_GRACE, name="screen")
        log.info("screen pid=%d stopping", self._proc.pid)
        return self._proc.returncode if self._proc.returncode is not None else -1


def screen_factory(channel: GatedChannel, grant: Grant) -> Backend:
    """``ScreenFactory`` for ``AgentTunnel``: the x11vnc (or test program) for a grant."""

    def exited(status: int, stderr: bytes) -> None:
        error = explain_exit(status, stderr) if status != 0 else None
        if error:
            log.error("session=%s screen failed: %s", grant.session_id, error)
        channel.finish(status, error)

    argv = screen_command(os.environ, view_only=grant.view_only)  # ScreenUnavailable
    try:
        return ScreenProcess(channel, argv, child_environment(os.environ), exited)
    except OSError as exc:
        raise ScreenUnavailable(
            f"the screen sharer could not start: {exc.strerror or exc}"
        ) from exc
