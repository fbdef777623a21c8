"""``allowhelp-agent session``: the helper in each graphical session, as its user.

It connects to the machine service's helper socket (checking that root
serves it from a folder only root can write), says ``helper``, and then:

- shows its user's prompts and the "session active" window with the usual
  front-ends (dialog, terminal); their answers go to the service, which
  decides (``ConsentHelperView`` stands in for ``AgentService``);
- starts, when the service asks, its user's login shell or screen server and
  hands the PTY master or socket over (``userprograms.py``), and ends them
  when told or when it stops.

If the service goes away (restart, upgrade) the helper ends its programs
and connects again, a growing while apart, until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from allowhelp.agent.consent import Grant, Pending
from allowhelp.agent.consentviews import ConsentFrontend
from allowhelp.agent.desktop import this_session
from allowhelp.agent.errors import AgentError
from allowhelp.agent.frontends import choose_frontends, close_frontends
from allowhelp.agent.i18n import _, user_language
from allowhelp.agent.machinesocket import check_socket_folder
from allowhelp.agent.news import NewsLine, SessionNews
from allowhelp.agent.seqpacket import PacketConn, close_fds, peer_credentials
from allowhelp.agent.service import NotConnected
from allowhelp.agent.userprograms import UserProgram, start_files, start_screen, start_shell
from allowhelp.protocol import helper as hp
from allowhelp.protocol.control import MAX_CHAT, ConsentRequest
from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.kinds import Via
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

ProgramKey = tuple[str, int]  # a session id, and the service's number of that start

RECONNECT_FIRST, RECONNECT_MAX = 1.0, 15.0


class ServiceAbsent(AgentError):
    """The machine service is not there (yet): worth waiting for, unlike a refusal."""


class _Organisation:
    def __init__(self) -> None:
        self.organisation = ""


class _Grants:
    def __init__(self) -> None:
        self.live: dict[str, Grant] = {}

    def grants(self, owner: int | None = None) -> list[Grant]:
        return list(self.live.values())


class ConsentHelperView:
    """The front-ends' ``ConsentService`` in a helper: answers go to the machine
    service (which decides, for this uid only); what it says comes back as packets."""

    def __init__(self) -> None:
        self.config = _Organisation()
        self.gate = _Grants()
        self.conn: PacketConn | None = None
        self.news = SessionNews()  # what the service forwards of this user's sessions

    def decide(self, session_id: str, *, allow: bool, view_only: bool, via: Via) -> None:
        packet: hp.Packet = (
            hp.Allow(session_id, view_only, via) if allow else hp.Deny(session_id, via)
        )
        self._send(packet)

    def end(self, session_id: str | None = None) -> list[str]:
        self._send(hp.End(session_id or ""))
        return [session_id] if session_id else sorted(self.gate.live)

    def say(self, session_id: str, text: str) -> None:
        """To the technician, through the service (which checks it is this uid's session)."""
        self._send(hp.Say(session_id, text[:MAX_CHAT]))

    def _send(self, packet: hp.Packet) -> None:
        if self.conn is None or not self.conn.send(packet.encode()):
            raise NotConnected(_("not connected to the machine service right now"))


class SessionHelper:
    def __init__(self, path: Path, frontends: list[ConsentFrontend], view: ConsentHelperView):
        self.path = path
        self.frontends = frontends
        self.view = view
        # by session id and the service's number for that start (``Open.program``)
        self.programs: dict[ProgramKey, UserProgram] = {}
        self.starting: dict[ProgramKey, asyncio.Task[None]] = {}  # screens awaiting their socket
        self.lost = asyncio.Event()

    def connect(self) -> PacketConn:
        if not self.path.parent.exists():
            raise ServiceAbsent(
                _("the machine service is not running (no %(path)s)") % {"path": self.path.parent}
            )
        check_socket_folder(self.path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(str(self.path))
            _pid, server = peer_credentials(sock)
            if server != 0:
                raise AgentError(
                    _("%(path)s is served by uid %(server)s, not by root: refusing it")
                    % {"path": self.path, "server": server}
                )
            offer = this_session()
            hello = hp.HelperHello(
                language=user_language(),
                screen=offer.engine,
                screen_problem=offer.problem,
                desktop=offer.desktop,
                monitors=offer.monitors,
                files_view_only=True,  # start_files(read_only=...) for Open.view_only
            )
            sock.send(hello.encode())
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise ServiceAbsent(
                _("the machine service is not running (no %(path)s)") % {"path": self.path}
            ) from None
        except OSError as exc:
            sock.close()
            raise AgentError(
                _("cannot reach the machine service: %(error)s") % {"error": exc.strerror or exc}
            ) from exc
        except AgentError:
            sock.close()
            raise
        self.lost.clear()
        conn = PacketConn(sock, self._packet, self._closed)
        self.view.conn = conn
        return conn

    def _closed(self, conn: PacketConn) -> None:
        self.view.conn = None
        for session_id in list(self.view.gate.live):
            self._ended(session_id)
        for key in list(self.programs):
            self._end_program(conn, key)
        self.lost.set()

    def _packet(self, conn: PacketConn, data: bytes, fds: list[int]) -> None:
        close_fds(fds)  # the service sends no descriptors
        try:
            raw = parse_json(data, "packet", 4)
            if isinstance(raw, dict) and raw.get("type") == "answer":
                self._answer(hp.read_answer(data))
                return
            packet = hp.decode(data)
        except ProtocolError as exc:
            log.error("the machine service sent a malformed packet: %s", exc)
            conn.close()
            return
        self._handle(conn, packet)

    def _answer(self, answer: dict[str, object]) -> None:
        if answer.get("helper"):
            self.view.config.organisation = str(answer.get("organisation", ""))
            log.info("connected to the machine service as %s", answer.get("user"))
        elif not answer.get("ok"):
            log.warning("the machine service refused: %s", answer.get("error"))

    def _handle(self, conn: PacketConn, packet: hp.Packet) -> None:
        if isinstance(packet, hp.Prompt):
            for frontend in self.frontends:
                frontend.prompt(_pending(packet))
        elif isinstance(packet, hp.PromptClosed):
            for frontend in self.frontends:
                frontend.prompt_closed(packet.session_id)
        elif isinstance(packet, hp.Active):
            grant = Grant(
                packet.session_id,
                packet.kind,
                packet.view_only,
                packet.technician,
                joins=packet.joins,
                mode=packet.mode,
                username=packet.username,
            )
            self.view.gate.live[packet.session_id] = grant
            for frontend in self.frontends:
                frontend.active(grant)
        elif isinstance(packet, hp.Ended):
            self._ended(packet.session_id)
        elif isinstance(packet, hp.News):
            kind = "chat" if packet.kind == "chat" else "transfer"
            line = NewsLine(packet.session_id, kind, packet.sender, packet.text, time.time())
            self.view.news.add(line)
        elif isinstance(packet, hp.Open):
            self._open(conn, packet)
        elif isinstance(packet, hp.Close):
            self._end_program(conn, (packet.session_id, packet.program))
        elif isinstance(packet, hp.Notice):
            show_notice(plain_text(packet.text, 500))

    def _ended(self, session_id: str) -> None:
        if self.view.gate.live.pop(session_id, None) is not None:
            for frontend in self.frontends:
                frontend.ended(session_id)

    def _open(self, conn: PacketConn, packet: hp.Open) -> None:
        key = (packet.session_id, packet.program)
        if key in self.programs or key in self.starting:
            conn.send(hp.Opened(key[0], False, "already started", program=key[1]).encode())
            return
        if packet.kind == "screen":
            task = asyncio.ensure_future(self._open_screen(conn, packet))
            self.starting[key] = task
            task.add_done_callback(lambda done: self._started(key, done))
            return
        try:
            if packet.kind == "shell":
                program = start_shell(packet.term, packet.cols, packet.rows)
            elif packet.kind == "files":
                program = start_files(os.environ, read_only=packet.view_only)
            else:
                raise RuntimeError(f"a session helper does not start a {packet.kind}")
        except (OSError, RuntimeError) as exc:
            self._refuse(conn, key, exc)
            return
        self._hand_over(conn, key, program)

    def _started(self, key: ProgramKey, task: asyncio.Task[None]) -> None:
        if self.starting.get(key) is task:
            del self.starting[key]

    async def _open_screen(self, conn: PacketConn, packet: hp.Open) -> None:
        """The screen server answers on its socket first (wayvnc takes a moment)."""
        try:
            program = await start_screen(
                os.environ, view_only=packet.view_only, monitor=packet.monitor, greet=packet.greet
            )
        except (OSError, RuntimeError) as exc:  # ScreenUnavailable is a RuntimeError
            self._refuse(conn, (packet.session_id, packet.program), exc)
            return
        self._hand_over(conn, (packet.session_id, packet.program), program)

    @staticmethod
    def _refuse(conn: PacketConn, key: ProgramKey, exc: OSError | RuntimeError) -> None:
        reason = str(exc) if isinstance(exc, RuntimeError) else (exc.strerror or str(exc))
        conn.send(hp.Opened(key[0], False, reason, program=key[1]).encode())

    def _hand_over(self, conn: PacketConn, key: ProgramKey, program: UserProgram) -> None:
        self.programs[key] = program
        greeted = bool(program.greeting)  # always rfbgreeting.RFB_VERSION when said
        opened = hp.Opened(key[0], True, greeted=greeted, program=key[1])
        conn.send(opened.encode(), [program.fd])
        program.handed_over()

    def _end_program(self, conn: PacketConn, key: ProgramKey) -> None:
        starting = self.starting.pop(key, None)
        if starting is not None:  # ended before its socket answered: the start ends it
            starting.cancel()
        program = self.programs.get(key)
        if program is None or program.ending is not None:
            return

        def report(ended: asyncio.Future[int]) -> None:
            if self.programs.get(key) is program:
                del self.programs[key]
            status = ended.result()
            exited = hp.Exited(key[0], status, program.error(status), program=key[1])
            conn.send(exited.encode())

        program.end().add_done_callback(report)

    async def wait_programs(self) -> None:
        for starting in list(self.starting.values()):
            starting.cancel()
        endings = [p.end() for p in self.programs.values()]
        if endings:
            await asyncio.gather(*endings, return_exceptions=True)


def show_notice(text: str) -> None:
    """Tell the user what IT did: the log, and a desktop notification where one can show."""
    log.info("notice: %s", text)
    notify_send = shutil.which("notify-send")
    if notify_send is None or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [notify_send, "--app-name=allowhelp", "IT on this PC", text],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _pending(packet: hp.Prompt) -> Pending:
    request = ConsentRequest(
        session_id=packet.session_id,
        organisation=packet.organisation,
        technician=packet.technician,
        kind=packet.kind,
        reason=packet.reason,
        phrase=packet.phrase,
        timeout=float(packet.seconds_left),
        help_code=packet.help_code,
        joins=packet.joins,
        mode=packet.mode,
        username=packet.username,
        view_only=packet.view_only,
    )
    now = asyncio.get_running_loop().time()
    return Pending(request, now, now + packet.seconds_left)


async def run_session(path: Path, *, prompt: str) -> None:
    view = ConsentHelperView()
    frontends = choose_frontends(view, prompt)
    helper = SessionHelper(path, frontends, view)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    conn = await _first_connection(helper, stop)
    if conn is None:
        await close_frontends(frontends)
        return
    delay = RECONNECT_FIRST
    try:
        while not stop.is_set():
            lost = asyncio.create_task(helper.lost.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stopping.cancel()
            while not stop.is_set() and helper.lost.is_set():
                log.warning("lost the machine service; trying again in %.0f s", delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RECONNECT_MAX)
                try:
                    conn = helper.connect()
                    delay = RECONNECT_FIRST
                except ServiceAbsent:
                    pass
    finally:
        conn.close()
        await helper.wait_programs()
        await close_frontends(frontends)


async def _first_connection(helper: SessionHelper, stop: asyncio.Event) -> PacketConn | None:
    """Wait for the machine service (a login may come before it is up); a socket
    that is not root's is refused at once (``AgentError``), never waited for."""
    delay = RECONNECT_FIRST
    while not stop.is_set():
        try:
            return helper.connect()
        except ServiceAbsent as exc:
            log.warning("%s; trying again in %.0f s", exc, delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RECONNECT_MAX)
    return None
