"""A program that runs in the user's session, driven from the machine service.

The user's shell and screen server run as that user, started by their
session helper (``agent/helper.py``): root never switches to the user and
never starts a program for them. The helper passes the program's end of the
stream to the service as a file descriptor (a PTY master for a shell, a
socket for the screen); the service checks what it got, then bridges it to
the granted SSH channel (``FdBridge``) exactly as it bridges its own PTY.

Ending: the service closes its descriptor (the PTY hangs up: the shell gets
SIGHUP from the kernel, whatever the helper does) and tells the helper to end
the program's process group. A helper that goes away ends its programs'
channels at once (``helper_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from allowhelp.agent.fdbridge import FdBridge
from allowhelp.agent.programinput import ProgramInput
from allowhelp.agent.pty import clamp_size
from allowhelp.agent.rfbgreeting import PacedOutput, SaidVersion
from allowhelp.agent.rfbinput import RfbInputError, ViewOnlyFilter
from allowhelp.agent.seqpacket import PacketConn, close_fds
from allowhelp.protocol.helper import Close, Open, Opened
from allowhelp.protocol.kinds import Kind

if TYPE_CHECKING:
    from allowhelp.agent.channels import GatedChannel
    from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 15.0  # the helper starts a login shell or x11vnc in this time
EXIT_TIMEOUT = 10.0  # and reports how it ended (its reaper's grace periods) in this
PTMX = (5, 2)  # /dev/ptmx: the only character device a shell's descriptor may be


def descriptor_problem(fd: int, kind: Kind) -> str | None:
    """Why ``fd`` is not what a helper must hand over for ``kind``; None when it is."""
    try:
        info = os.fstat(fd)
    except OSError as exc:
        return f"the descriptor cannot be examined: {exc.strerror or exc}"
    if kind == "shell":
        if stat.S_ISCHR(info.st_mode) and (os.major(info.st_rdev), os.minor(info.st_rdev)) == PTMX:
            return None
        return "the session helper sent something that is not a terminal (PTY master)"
    if stat.S_ISSOCK(info.st_mode):
        return None
    return "the session helper sent something that is not a socket"


class RemoteProgram:
    """A channel ``Backend`` whose program runs in the user's session."""

    def __init__(
        self,
        conn: PacketConn,
        channel: GatedChannel,
        grant: Grant,
        kind: Kind,
        *,
        term: str,
        size: tuple[int, int],
        forget: Callable[[RemoteProgram], None],
        number: int = 0,
    ) -> None:
        self.conn = conn
        self.session_id = grant.session_id
        self.number = number  # this start's, among the session's (``Open.program``)
        self.kind = kind
        self._channel = channel
        self._size = size
        self._forget = forget
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._bridge: FdBridge | None = None
        # The user's screen server got --disable-input / -viewonly; root does not trust it.
        # What comes before the helper hands the program over waits (programinput.py).
        only_view = kind == "screen" and grant.view_only
        self._input = ProgramInput(
            channel, view_only_filter=ViewOnlyFilter() if only_view else None
        )
        self.done = False
        cols, rows = clamp_size(*size) if kind == "shell" else (0, 0)
        ask = Open(
            grant.session_id,
            kind,
            term,
            cols,
            rows,
            grant.view_only,
            grant.monitor,
            greet=True,
            program=number,
        )
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            OPEN_TIMEOUT, self._fail, f"the user's session did not start the {kind} in time"
        )
        if not conn.send(ask.encode()):
            raise RuntimeError("the user's session helper is gone")

    # what the helper says

    def opened(self, packet: Opened, fds: list[int]) -> None:
        self._cancel_timer()
        if self.done:
            close_fds(fds)
            return
        if not packet.ok or len(fds) != 1:
            close_fds(fds)
            self._fail(packet.error or f"the user's session could not start the {self.kind}")
            return
        problem = descriptor_problem(fds[0], self.kind)
        if problem is not None:
            close_fds(fds)
            log.warning("session=%s uid %d: %s", self.session_id, self.conn.uid, problem)
            self.conn.send(Close(self.session_id, self.number).encode())
            self._fail(problem)
            return
        self._fd = fds[0]
        # the helper said the viewer's version ahead: the server's words after its own
        # wait for the viewer's (rfbgreeting.py)
        said = SaidVersion() if packet.greeted and self.kind == "screen" else None
        paced = PacedOutput(self._channel, said) if said is not None else None
        self._bridge = FdBridge(self._fd, paced or self._channel, self._program_closed)
        self.resize(*self._size)
        try:
            self._input.attach(self._bridge, said=said, paced=paced)
        except RfbInputError as exc:
            self.close()
            self._channel.finish(1, str(exc))
            return
        log.info(
            "session=%s %s runs in the session of uid %d", self.session_id, self.kind, self.conn.uid
        )

    def exited(self, status: int, error: str) -> None:
        """The helper reaped the program: the channel ends with its status."""
        if self.done:
            return
        self._end_here()
        self._channel.finish(status, error or None)

    def helper_lost(self) -> None:
        if not self.done:
            self._end_here()
            self._channel.finish(1, "the user's session helper went away (signed out?)")

    # the channel's side (Backend)

    def write(self, data: bytes) -> None:
        if self.done:
            return
        try:
            self._input.write(data)  # typed before the shell was there: held, in order
        except RfbInputError as exc:
            self.close()
            self._channel.finish(1, str(exc))

    def pause(self) -> None:
        if self._bridge is not None:
            self._bridge.pause()

    def resume(self) -> None:
        if self._bridge is not None:
            self._bridge.resume()

    def resize(self, cols: int, rows: int) -> None:
        self._size = (cols, rows)
        if self._fd < 0 or self.kind != "shell":
            return
        cols, rows = clamp_size(cols, rows)
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> int:
        """The grant ended: hang up now, and have the helper end the program's group."""
        if not self.done:
            self._end_here()
            self.conn.send(Close(self.session_id, self.number).encode())
        return -1

    # inside

    def _program_closed(self) -> None:
        """The program closed its end (the shell exited): ask how it ended."""
        self._stop_bridge()
        if not self.done:
            self.conn.send(Close(self.session_id, self.number).encode())
            self._timer = self._loop.call_later(
                EXIT_TIMEOUT, self.exited, 1, "the user's session did not say how it ended"
            )

    def _fail(self, error: str) -> None:
        if not self.done:
            log.error("session=%s %s", self.session_id, error)
            self._end_here()
            self._channel.finish(1, error)

    def _end_here(self) -> None:
        self.done = True
        self._cancel_timer()
        self._stop_bridge()
        self._forget(self)

    def _stop_bridge(self) -> None:
        if self._bridge is not None:
            self._bridge.stop()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
