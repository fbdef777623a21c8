"""The PC's screen for one granted session: the engine the session offers, bridged.

Engines (``desktop.choose_engine``): on X11 ``x11vnc -inetd`` on a socketpair
(below); on wlroots Wayland compositors wayvnc on a UNIX socket private to the
user (``wayvnc.py``); GNOME and KDE on Wayland through the ScreenCast and
RemoteDesktop portals into our own RFB server (``portalvnc.py``; docs/wayland.md).
Whatever the engine, the agent ends up with one
connected socket to the server and bridges it; on a view-only grant the
viewer's bytes pass ``rfbinput.ViewOnlyFilter`` first.

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
    -nonap             no naps between polls: with them x11vnc's first update
                       came 0.7 s after the viewer's request, without 0.17 s
                       (docs/benchmarks.md, peers); an idle screen costs about
                       1 % of a core more while the session lasts
    -noprimary -nosetprimary
                       only the CLIPBOARD travels (what the user copied), not
                       every text they happen to highlight
    -viewonly -nosel   a view-only grant: no input, no clipboard either way
                       (the broker also drops input, so neither alone is trusted)
    -clip WxH+X+Y      the one monitor the technician picked (its place as
                       ``xrandr --listmonitors`` says it now; agent/monitors.py)
And one thing that is not an option: the agent writes the viewer's version line
(``RFB 003.008``, the only one the broker lets through) into x11vnc's socket as
it starts it, so x11vnc does not wait 100 ms to see whether a WebSocket opens the
connection (libvncserver does, on every connection); the viewer's own line is
checked and dropped on its way (``rfbgreeting.py``). x11vnc from its start to
its version line: 0.15 s before, 0.05 s after; the click to the first picture
0.17 s before, 0.06 s after (``bench/firstpicture.py``, docs/benchmarks.md §7d).
Not used: ``-q`` (with -inetd it closes stderr, and stderr is where x11vnc
says why it failed), ``-noshm`` (the X server is local: shared memory is fine).

When the screen cannot be shared the reason is plain: no DISPLAY, a Wayland
session without an engine, x11vnc or wayvnc missing, or the server's own last
words (``XOpenDisplay failed``).
It goes to the channel's stderr and exit status; the broker ends the session
with that reason and audits it.

Test knob, off by default: ``ALLOWHELP_TEST_SCREEN_COMMAND`` (a command line)
runs that program instead of x11vnc, on the same socketpair, without the X
checks and without the agent's own view-only filter (the tests of the broker's
filter need the bytes the broker let through). The test suite uses it to put
a hostile VNC server behind the agent.
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
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Protocol

from allowhelp.agent.desktop import TEST_COMMAND_ENV as TEST_COMMAND_ENV  # noqa: PLC0414 - its old home
from allowhelp.agent.desktop import choose_engine, probe
from allowhelp.agent.fdbridge import FdBridge, Output
from allowhelp.agent.monitors import session_monitors
from allowhelp.agent.reaper import end_process_group
from allowhelp.agent.rfbgreeting import RFB_VERSION, PacedOutput, SaidVersion
from allowhelp.agent.rfbinput import RfbInputError, ViewOnlyFilter
from allowhelp.agent.wayvnc import WayvncLaunch
from allowhelp.protocol.monitors import ALL as ALL_MONITORS
from allowhelp.protocol.monitors import Monitor
from allowhelp.protocol.monitors import find as find_monitor
from allowhelp.protocol.monitors import refusal as monitor_refusal
from allowhelp.protocol.text import plain_text

if TYPE_CHECKING:
    from allowhelp.agent.channels import Backend, GatedChannel
    from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

X11VNC = "x11vnc"
STDERR_TAIL = 16 * 1024
TERM_GRACE = 2.0
EXIT_PATIENCE = 0.5  # a program that closed its socket is exiting: let it, before SIGTERM
MAX_EARLY_INPUT = 64 * 1024  # what the viewer sent before the server answered
KEEP_ENV = ("DISPLAY", "XAUTHORITY", "HOME", "USER", "LOGNAME", "PATH", "LANG", "LC_ALL")
PORTAL_ENV = (
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "WAYLAND_DISPLAY",
    "XDG_CURRENT_DESKTOP",
    "XDG_SESSION_TYPE",
    "PYTHONPATH",
)


class ScreenUnavailable(RuntimeError):
    """This PC cannot share its screen; the message says why, for the technician."""


def x11vnc_argv(program: str, display: str, *, view_only: bool, clip: str = "") -> list[str]:
    argv = [program, "-norc", "-inetd", "-display", display, "-once", "-nopw", "-safer"]
    argv += ["-nocmds", "-noipv6", "-nolookup", "-nonc", "-noxdamage", "-nonap"]
    argv += ["-noprimary", "-nosetprimary"]
    if view_only:
        argv += ["-viewonly", "-nosel"]
    if clip:
        argv += ["-clip", clip]
    return argv


def screen_command(env: Mapping[str, str], *, view_only: bool, clip: str = "") -> list[str]:
    """The program to run for this grant, or ScreenUnavailable with the reason."""
    override = env.get(TEST_COMMAND_ENV, "").strip()
    if override:
        log.warning("%s is set: the screen is %r, not x11vnc", TEST_COMMAND_ENV, override)
        return shlex.split(override)
    if not env.get("DISPLAY"):
        raise ScreenUnavailable("no X display: the agent was started without DISPLAY")
    program = shutil.which(X11VNC, path=env.get("PATH") or os.defpath)
    if program is None:
        raise ScreenUnavailable("x11vnc is not installed on this PC (Debian: apt install x11vnc)")
    return x11vnc_argv(program, env["DISPLAY"], view_only=view_only, clip=clip)


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


def portal_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The session bus and the display for the portal engine (and where allowhelp is)."""
    kept = child_environment(env)
    for key in PORTAL_ENV:
        if key in env:
            kept[key] = env[key]
    return kept


def wlroots_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The portal engine's, and sway's socket and keyboard for ``wayvncall``."""
    kept = portal_environment(env)
    for key in ("SWAYSOCK", "XKB_DEFAULT_LAYOUT"):
        if key in env:
            kept[key] = env[key]
    return kept


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    kept = {key: env[key] for key in KEEP_ENV if key in env}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


class ScreenLaunch(Protocol):
    """A started screen server: its process, the viewer's socket once it answers, and
    what to remove after it (wayvnc's private folder)."""

    proc: subprocess.Popen[bytes]

    async def connect(self) -> socket.socket: ...

    def cleanup(self) -> None: ...


class PairLaunch:
    """x11vnc (or the test program) with one end of a socketpair as its stdin and stdout.

    ``greeting``: bytes already in the socket when the program starts (x11vnc: the
    viewer's version, said ahead; whoever bridges drops the viewer's own, SaidVersion)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], *, greeting: bytes = b"") -> None:
        self._mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.greeting = greeting
        try:
            if greeting:
                self._mine.sendall(greeting)  # queued in the pair: a few bytes never block
            self.proc = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own process group: close() kills it all
                close_fds=True,
            )
        except OSError:
            self._mine.close()
            raise
        finally:
            theirs.close()

    async def connect(self) -> socket.socket:
        return self._mine

    def cleanup(self) -> None:
        """Nothing on disk: a socketpair has no path."""


def chosen_monitor(env: Mapping[str, str], engine: str, choice: str) -> Monitor | None:
    """The monitor the grant names, as the session has it now (None: the default or all);
    ScreenUnavailable when the engine cannot show that choice (deny by default: a
    monitor the session does not have is refused, never shown as a black screen)."""
    if not choice:
        return None
    found = session_monitors(env, engine)
    problem = monitor_refusal(engine, found, choice)
    if problem:
        raise ScreenUnavailable(problem)
    return find_monitor(found, choice)


def greeted(launch: ScreenLaunch) -> bytes:
    """What the agent said to the server for the viewer (SaidVersion drops the viewer's own)."""
    return launch.greeting if isinstance(launch, PairLaunch) else b""


def launch_screen(
    env: Mapping[str, str], *, view_only: bool, monitor: str = "", greet: bool = True
) -> ScreenLaunch:
    """Start the engine this session offers (desktop.py), or ScreenUnavailable saying why.

    ``monitor``: the grant's choice (protocol/monitors.py): one monitor, ``all``, or ""."""
    offer = choose_engine(env, probe(env))
    if not offer.available:
        raise ScreenUnavailable(offer.problem)
    picked = chosen_monitor(env, offer.engine, monitor)
    try:
        if offer.engine == "portal":
            argv = [sys.executable, "-m", "allowhelp.agent.portalvnc"]
            argv += [] if view_only else ["--control"]
            argv += ["--all-monitors"] if monitor == ALL_MONITORS else []
            return PairLaunch(argv, portal_environment(env))
        if offer.engine == "wlroots" and monitor == ALL_MONITORS:
            argv = [sys.executable, "-m", "allowhelp.agent.wayvncall"]
            argv += [] if view_only else ["--control"]
            return PairLaunch(argv, wlroots_environment(env))
        if offer.engine == "wlroots":
            output = picked.name if picked else ""
            return WayvncLaunch(env, view_only=view_only, output=output)
        if offer.engine == "x11":
            clip = picked.geometry if picked else ""
            argv = screen_command(env, view_only=view_only, clip=clip)
            # the test knob's program gets the viewer's bytes as they are
            knob = bool(env.get(TEST_COMMAND_ENV, "").strip())
            greeting = RFB_VERSION if greet and not knob else b""
            return PairLaunch(argv, child_environment(env), greeting=greeting)
    except OSError as exc:
        raise ScreenUnavailable(
            f"the screen sharer could not start: {exc.strerror or exc}"
        ) from exc
    except RuntimeError as exc:
        raise ScreenUnavailable(str(exc)) from exc
    raise ScreenUnavailable(f"no screen engine for {offer.desktop}")


class ScreenProcess:
    """One screen server, bridged to ``output`` once its socket answers; a channel Backend.

    On a view-only grant the viewer's bytes pass ``ViewOnlyFilter`` first, whatever
    the engine's own flag says."""

    def __init__(
        self,
        output: Output,
        launch: ScreenLaunch,
        on_exit: Callable[[int, bytes], None],
        *,
        view_only: bool = False,
    ) -> None:
        self._output = output
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._launch = launch
        self._proc = launch.proc
        stderr = self._proc.stderr
        if stderr is None:
            raise OSError("no stderr pipe")  # cannot happen with stderr=PIPE
        self._stderr_file: IO[bytes] = stderr
        self._stderr = stderr.fileno()
        os.set_blocking(self._stderr, False)
        self._tail = bytearray()
        self._stderr_closed = False
        self._filter = ViewOnlyFilter() if view_only else None
        said = greeted(launch)
        self._said = SaidVersion(said) if said else None
        self._paced = PacedOutput(output, self._said) if self._said is not None else None
        self._sock: socket.socket | None = None
        self._bridge: FdBridge | None = None
        self._early = bytearray()
        self._paused = False
        self._closed = False
        self.ended: asyncio.Future[int] | None = None  # set once the teardown has begun
        self._loop.add_reader(self._stderr, self._stderr_readable)
        self._connecting = asyncio.ensure_future(self._connect())
        log.info("screen pid=%d started (%s)", self._proc.pid, type(launch).__name__)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def _connect(self) -> None:
        try:
            sock = await self._launch.connect()
        except RuntimeError as exc:
            if self._proc.poll() is None:  # still running: say what we saw (it says nothing)
                self._tail += f"\n{exc}\n".encode()
            self._finish()
            return
        if self._closed:
            sock.close()
            return
        self._sock = sock
        self._bridge = FdBridge(sock.fileno(), self._paced or self._output, self._finish)
        if self._paused:
            self._bridge.pause()
        if self._early:
            self._bridge.write(bytes(self._early))
            self._early.clear()

    def _stderr_readable(self) -> None:
        """Keep the last STDERR_TAIL bytes of what the server says; stop at the pipe's end."""
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
        """The channel is full: stop reading, so the server waits on its socket."""
        self._paused = True
        if self._bridge is not None:
            self._bridge.pause()

    def resume(self) -> None:
        self._paused = False
        if self._bridge is not None:
            self._bridge.resume()

    def resize(self, cols: int, rows: int) -> None:
        """A screen has no terminal size."""

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            if self._filter is not None:
                data = self._filter.feed(data)
            if self._said is not None:
                data = self._said.feed(data)
        except RfbInputError as exc:
            log.warning("screen pid=%d: %s", self._proc.pid, exc)
            self._tail += f"\n{exc}\n".encode()
            self._finish()
            return
        if self._paced is not None:
            self._paced.release()
        if self._bridge is not None:
            self._bridge.write(data)
        elif len(self._early) + len(data) <= MAX_EARLY_INPUT:
            self._early += data

    def _stop_bridge(self) -> None:
        self._closed = True
        self._connecting.cancel()
        if self._bridge is not None:
            self._bridge.stop()
        if self._sock is not None:
            self._sock.close()

    def _finish(self) -> None:
        """The program closed its end (viewer gone, or it failed), or never answered.

        It gets EXIT_PATIENCE to exit by itself (its own status, not our
        SIGTERM's); its last words are read once it is gone, then reported."""
        if self._closed:
            return
        self._stop_bridge()
        self.ended = end_process_group(
            self._proc, (signal.SIGTERM,), TERM_GRACE, name="screen", patience=EXIT_PATIENCE
        )
        self.ended.add_done_callback(self._report)

    def _report(self, ended: asyncio.Future[int]) -> None:
        self._stderr_readable()  # what is left in the pipe, up to its end
        self._close_stderr()
        self._launch.cleanup()
        self._on_exit(ended.result(), bytes(self._tail))

    def close(self) -> int:
        """Stop the program and everything it started; safe to call again.

        Returns at once: the reaper gives the server TERM_GRACE after SIGTERM, then
        SIGKILLs whatever of the group is left (no process survives)."""
        if self._closed:
            return self._proc.returncode if self._proc.returncode is not None else -1
        self._stop_bridge()  # x11vnc sees its viewer leave and cleans up (key autorepeat)
        self._close_stderr()
        # SIGTERM: x11vnc restores the X server's settings before it exits.
        self.ended = end_process_group(self._proc, (signal.SIGTERM,), TERM_GRACE, name="screen")
        self.ended.add_done_callback(lambda _: self._launch.cleanup())
        log.info("screen pid=%d stopping", self._proc.pid)
        return self._proc.returncode if self._proc.returncode is not None else -1


def screen_factory(channel: GatedChannel, grant: Grant) -> Backend:
    """``ScreenFactory`` for ``AgentTunnel``: the x11vnc (or test program) for a grant."""

    def exited(status: int, stderr: bytes) -> None:
        error = explain_exit(status, stderr) if status != 0 else None
        if error:
            log.error("session=%s screen failed: %s", grant.session_id, error)
        channel.finish(status, error)

    # ScreenUnavailable says why not (a monitor the session does not have, too)
    launch = launch_screen(os.environ, view_only=grant.view_only, monitor=grant.monitor)
    # The test knob's program sees exactly what the broker let through (the tests of
    # the broker's own view-only filter need that); every real engine gets the filter.
    knob = bool(os.environ.get(TEST_COMMAND_ENV, "").strip())
    return ScreenProcess(channel, launch, exited, view_only=grant.view_only and not knob)
