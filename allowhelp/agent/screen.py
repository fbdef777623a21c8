"""The PC's screen for one granted session: the engine the session offers, bridged.

Engines (``desktop.choose_engine``, started by ``screenlaunch.py``): on X11
``x11vnc -inetd`` on a socketpair (``x11vnc.py``); on wlroots Wayland
compositors wayvnc on a UNIX socket private to the user (``wayvnc.py``); GNOME
and KDE on Wayland through the ScreenCast and RemoteDesktop portals into our own
RFB server (``portalvnc.py``; docs/wayland.md). Whatever the engine, the agent
ends up with one connected socket to the server and bridges it; on a view-only
grant the viewer's bytes pass ``rfbinput.ViewOnlyFilter`` first.

Flow control is as for the shell: when the channel is full the agent stops
reading the socket, and the server (which only sends what the viewer asked for)
waits. What the viewer sends before the server's socket answers is kept, up to
``MAX_EARLY_INPUT``; past that the channel is not read until the socket is
there (the viewer waits; nothing is dropped).

When the server stops, its own last words (``XOpenDisplay failed``) go to the
channel's stderr and exit status; the broker ends the session with that reason
and audits it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.agent.fdbridge import FdBridge, Output
from allowhelp.agent.programinput import ProgramInput
from allowhelp.agent.reaper import end_process_group
from allowhelp.agent.rfbgreeting import PacedOutput, SaidVersion
from allowhelp.agent.rfbinput import RfbInputError, ViewOnlyFilter
from allowhelp.agent.screenlaunch import ScreenLaunch, greeted, launch_screen
from allowhelp.agent.x11vnc import explain_exit

if TYPE_CHECKING:
    from allowhelp.agent.channels import Backend, GatedChannel
    from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

STDERR_TAIL = 16 * 1024
TERM_GRACE = 2.0
EXIT_PATIENCE = 0.5  # a program that closed its socket is exiting: let it, before SIGTERM


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
        ahead = greeted(launch)
        said = SaidVersion(ahead) if ahead else None
        self._paced = PacedOutput(output, said) if said is not None else None
        # what the viewer sends before the socket answers waits (programinput.py)
        self._input = ProgramInput(
            output,
            view_only_filter=ViewOnlyFilter() if view_only else None,
            said=said,
            paced=self._paced,
        )
        self._sock: socket.socket | None = None
        self._bridge: FdBridge | None = None
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
        self._input.attach(self._bridge)

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
            self._input.write(data)
        except RfbInputError as exc:
            log.warning("screen pid=%d: %s", self._proc.pid, exc)
            self._tail += f"\n{exc}\n".encode()
            self._finish()

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
