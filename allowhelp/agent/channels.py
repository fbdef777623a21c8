"""The agent's SSH server: deny by default, and every channel through the gate.

What the broker may open, and only this:
- ``session`` channel + subsystem ``allowhelp.control``: the control channel
  (one per tunnel). It can only show prompts and carry messages.
- ``session`` channel + optional ``pty-req`` + subsystem
  ``allowhelp.shell/<session>``, ``allowhelp.screen/<session>`` or
  ``allowhelp.files/<session>`` (SFTP, served by sftp-server as the user): opens only
  under a live grant for that session and kind (``ConsentGate.claim``).

Refused: shell and exec requests, any other subsystem (sftp), env, X11 and
agent forwarding, every TCP/UNIX forwarding, and password logins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import asyncssh

from allowhelp.agent.consent import ConsentRefused, Grant
from allowhelp.agent.hello import current_hello
from allowhelp.agent.service import AgentService
from allowhelp.certs import ssh_options
from allowhelp.certs.ssh_fastlane import write_data
from allowhelp.certs.sshkeys import public_key_line
from allowhelp.protocol.control import LineBuffer, Message, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM, parse_channel_subsystem

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What a granted channel is bridged to (a PTY shell, an x11vnc)."""

    def write(self, data: bytes) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def close(self) -> int: ...


ScreenFactory = Callable[["GatedChannel", Grant], Backend]
FilesFactory = ScreenFactory  # sftp-server as the user, on a socketpair
# The user's shell when the agent is not that user (the machine service asks
# their session helper): channel, grant, TERM, (cols, rows).
ShellFactory = Callable[["GatedChannel", Grant, str, tuple[int, int]], Backend]


class AgentSSHServer(asyncssh.SSHServer):
    def __init__(
        self,
        service: AgentService,
        broker_key: str,
        screen: ScreenFactory | None,
        shell: ShellFactory | None = None,
        files: FilesFactory | None = None,
    ) -> None:
        self._service = service
        self._broker_key = broker_key
        self._screen = screen
        self._shell = shell
        self._files = files
        self.control_open = False

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = username == ssh_options.BROKER_USERNAME and public_key_line(key) == self._broker_key
        if not ok:
            log.warning("agent=%s refused a tunnel peer: not the pinned broker", self.agent_id)
        return ok

    @property
    def agent_id(self) -> str:
        return self._service.config.agent_id

    def session_requested(self) -> Any:
        channel = GatedChannel(self)
        return channel

    def connection_requested(self, *args: object) -> bool:
        log.warning("agent=%s refused a direct-tcpip forward", self.agent_id)
        return False

    def server_requested(self, *args: object) -> bool:
        log.warning("agent=%s refused a remote forward", self.agent_id)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.warning("agent=%s refused a UNIX socket forward", self.agent_id)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def tun_requested(self, unit: int | None) -> bool:
        return False

    def tap_requested(self, unit: int | None) -> bool:
        return False


class GatedChannel(asyncssh.SSHServerSession[bytes]):
    """One ``session`` channel; becomes control, shell or screen at its subsystem request."""

    def __init__(self, server: AgentSSHServer) -> None:
        self._server = server
        self._service = server._service
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._term = "xterm-256color"
        self._size = (80, 24)
        self._has_pty = False
        self._backend: Backend | None = None
        self._control: LineBuffer | None = None
        self._control_broken = False
        self.grant: Grant | None = None

    @property
    def chan(self) -> asyncssh.SSHServerChannel[bytes]:
        if self._chan is None:
            raise RuntimeError("the channel is not open yet")
        return self._chan

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        # asyncssh accepts every env request on its own; we take none.
        chan._process_env_request = lambda packet: False  # type: ignore[method-assign]

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self._term = term_type[:64]
        self._size = (term_size[0] or 80, term_size[1] or 24)
        self._has_pty = True
        return True

    def shell_requested(self) -> bool:
        log.warning("agent=%s refused a shell request without a session", self._server.agent_id)
        return False

    def exec_requested(self, command: str) -> bool:
        log.warning("agent=%s refused an exec request", self._server.agent_id)
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == CONTROL_SUBSYSTEM:
            return self._open_control()
        parsed = parse_channel_subsystem(subsystem)
        if parsed is None:
            log.warning("agent=%s refused subsystem %r", self._server.agent_id, subsystem[:60])
            return False
        kind, session_id = parsed
        try:
            self.grant = self._service.gate.claim(session_id, kind, self._revoked)
        except ConsentRefused as exc:
            log.warning("agent=%s session=%s refused: %s", self._server.agent_id, session_id, exc)
            return False
        try:
            self._backend = self._start(kind)
        # ImportError: a session's modules load with its first use (runner.py); files
        # replaced by an upgrade under a running agent fail this session, not the tunnel
        except (OSError, RuntimeError, ImportError) as exc:
            log.error("session=%s could not start its %s: %s", session_id, kind, exc)
            # Accept the request first, then say why and close: closing inside
            # this callback would leave the broker waiting for a reply forever.
            asyncio.get_running_loop().call_soon(self.finish, 1, str(exc))
        except Exception as exc:  # any other fault fails this session alone
            # (e.g. a module of a newer version, loaded after an upgrade, that does not
            # fit the running one): the traceback goes to the log, the tunnel stays up
            log.exception("session=%s could not start its %s", session_id, kind)
            reason = f"the agent failed to start it ({type(exc).__name__}): restart the agent"
            asyncio.get_running_loop().call_soon(self.finish, 1, reason)
        return True

    def _start(self, kind: str) -> Backend:
        if kind in ("shell", "admin-shell") and self.grant is not None and self.grant.joins:
            return self._service.participants.join(self.grant, self)  # an invitee (#18)
        if kind in ("shell", "admin-shell"):
            backend = self._start_shell(kind)
            if self.grant is not None:
                self._service.participants.open(self.grant.session_id, backend)
            return backend
        return self._start_other(kind)

    def _start_shell(self, kind: str) -> Backend:
        if kind in ("shell", "admin-shell"):
            if not self._has_pty:
                raise RuntimeError("a shell needs a terminal (pty-req)")
            cols, rows = self._size
            if kind == "admin-shell" and not self._service.system:
                raise RuntimeError("this agent runs per user: it has no administrator shell")
            if kind == "shell" and self._server._shell is not None and self.grant is not None:
                return self._server._shell(self, self.grant, self._term, self._size)
            # The agent's own login shell: the user's (per-user agent), root's (admin-shell).
            from allowhelp.agent.pty import PtyShell  # noqa: PLC0415 - loaded by the first shell

            return PtyShell(self, term=self._term, cols=cols, rows=rows, on_exit=self.finish)
        raise RuntimeError(f"{kind} is not a shell")

    def _start_other(self, kind: str) -> Backend:
        if kind == "files":
            if self._server._files is None or self.grant is None:
                raise RuntimeError("this agent cannot exchange files")
            return self._server._files(self, self.grant)
        if self._server._screen is None or self.grant is None:
            raise RuntimeError("this agent cannot share its screen")
        return self._server._screen(self, self.grant)

    def _open_control(self) -> bool:
        if self._server.control_open:
            return False
        self._server.control_open = True
        self._control = LineBuffer()
        self._service.attach(self.send_message)
        self.send_message(self._service.stamp_hello(self._service.hello() or current_hello()))
        return True

    def send_message(self, message: Message) -> None:
        if self._chan is not None:
            self.chan.write(message.encode())

    # Output (used by backends)

    def write(self, data: bytes) -> None:
        write_data(self.chan, data)  # at once when it fits (``ssh_fastlane.py``)
        if self.grant is not None and not self.grant.joins:  # the owner's shell: to everyone
            self._service.participants.output(self.grant.session_id, data)

    def backlog(self) -> int:
        """Bytes written to this channel and not yet taken by the broker."""
        return self.chan.get_write_buffer_size()

    def pause_reading(self) -> None:
        self.chan.pause_reading()

    def resume_reading(self) -> None:
        self.chan.resume_reading()

    def finish(self, status: int, error: str | None = None) -> None:
        """The backend ended or could not start: say why (on stderr, which the
        broker keeps apart from the data), send the exit status, then release
        the grant — in that order, so the broker can tell the three cases apart."""
        self._backend = None
        if self._chan is None:
            return
        if self._chan.is_closing():
            # The broker closed the channel first. Had the backend paused reading
            # (input held before its program was there, ``programinput.py``),
            # asyncssh keeps that close behind the unread bytes and never calls
            # ``connection_lost``: our own close drops them and delivers it, which
            # lets the grant go (a no-op when it was delivered already).
            self._chan.close()
            return
        if error:
            with contextlib.suppress(BrokenPipeError):
                self._chan.write_stderr(f"allowhelp: {error}\r\n".encode())
        self._chan.exit(status if 0 <= status < 256 else 1)
        self._let_go()

    def _let_go(self) -> None:
        """This channel is done with its grant: a session's grant ends with it; an
        invitation's stands, so its invitee may attach again (#18) until it is
        revoked, removed or its session ends."""
        if self.grant is None:
            return
        if self.grant.joins:
            self._service.gate.unclaim(self.grant.session_id, self._revoked)
        else:
            self._service.release(self.grant.session_id)

    def _revoked(self) -> None:
        """The grant ended (user, broker, tunnel loss): the channel goes at once."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        if self._chan is not None:
            self._chan.close()

    # SSH side

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._control is not None:
            self._control_data(self._control, data)
        elif self._backend is not None:
            self._backend.write(data)

    def _control_data(self, lines: LineBuffer, data: bytes) -> None:
        if self._control_broken:
            return  # the tunnel is closing: nothing more from this peer is read
        try:
            for line in lines.feed(data):
                self._service.on_message(decode(line))
        except ProtocolError as exc:
            # Only a broken or hostile peer breaks the protocol: drop the tunnel.
            # ``decode`` raises nothing else, whatever the line (deep nesting included).
            self._control_broken = True
            log.error(
                "agent=%s bad control channel (protocol error), tunnel closed: %s",
                self._server.agent_id,
                exc,
            )
            self.chan.get_extra_info("connection").close()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._backend is not None:
            self._backend.resize(width, height)

    def pause_writing(self) -> None:
        if self._backend is not None:
            self._backend.pause()

    def resume_writing(self) -> None:
        if self._backend is not None:
            self._backend.resume()

    def break_received(self, msec: int) -> bool:
        return False

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.grant is not None and not self.grant.joins:
            self._service.participants.close(self.grant.session_id)
        if self._control is not None:
            self._service.detach(self.send_message)
            self._server.control_open = False
        self._let_go()
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
