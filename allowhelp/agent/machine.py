"""The machine service's local side: the helper socket, who is signed in, whose request is whose.

``allowhelp-agent run --system`` (root) holds the tunnel, the identity and
the consent gate (``AgentService``, the one consent logic). This hub is what
the PC's users reach it through: one ``SOCK_SEQPACKET`` socket, mode 0666 in
a root-owned folder nobody else can write, where every peer is known by the
uid the kernel gives (``SO_PEERCRED``) and by nothing it says.

- Session helpers (``allowhelp-agent session``) register and stay: they are
  the "signed in" users (``signedin.py`` picks the one a request goes to),
  they show their user's prompts, and they start that user's shell and
  screen server (``remote.py``).
- The CLI sends one request. Every request is answered for the caller's uid
  alone: another local user sees no foreign request and cannot allow, deny or
  end one (refused exactly as a request that does not exist;
  ``machinerequests.py``).

Where the socket lives and how its folder is checked: ``machinesocket.py``;
the helpers connected and who of them is signed in: ``sessionhelpers.py``; the
programs they started for sessions: ``hubprograms.py``; the ``Hello`` that names
the signed-in user: ``machinehello.py``.

Bounded: at most ``MAX_CONNECTIONS`` connections, ``MAX_PER_UID`` per uid,
``MAX_HELPERS_PER_UID`` helpers per uid; a silent client goes after ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.agent.consent import ConsentRefused, Grant, Pending
from allowhelp.agent.errors import AgentError
from allowhelp.agent.hubprograms import HubPrograms
from allowhelp.agent.i18n import _, speaking
from allowhelp.agent.localpath import adopted_connections, inherited_listener
from allowhelp.agent.machinehello import Said, machine_hello
from allowhelp.agent.machinerequests import answer_decision, answer_query, ask_help, prompt_packet
from allowhelp.agent.machinesocket import listen_at
from allowhelp.agent.news import NewsLine
from allowhelp.agent.seqpacket import PacketConn, close_fds
from allowhelp.agent.service import AgentService
from allowhelp.agent.sessionhelpers import SessionHelpers
from allowhelp.agent.signedin import ActiveUid, user_name
from allowhelp.protocol import helper as hp
from allowhelp.protocol.control import MAX_CHAT, Hello
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import Kind

if TYPE_CHECKING:  # loaded with the first session (tests/house/test_idle_imports.py)
    from allowhelp.agent.channels import Backend, GatedChannel

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_PER_UID = 8
MAX_HELPERS_PER_UID = 4
IDLE_TIMEOUT = 10.0


class HelperHub:
    """The helper socket, the signed-in user, and a ``ConsentFrontend`` that
    forwards prompts to the helpers of the request's owner."""

    def __init__(
        self, path: Path, *, active_uid: ActiveUid | None, hostname: str = "", os_name: str = ""
    ) -> None:
        self.path = path
        self._hostname, self._os = hostname, os_name
        self.service: AgentService | None = None
        self._listener: socket.socket | None = None
        self._conns: set[PacketConn] = set()
        self._inherited: socket.socket | None = None
        self._helpers = SessionHelpers(active_uid)
        self._idle: dict[PacketConn, asyncio.TimerHandle] = {}
        self.programs = HubPrograms()  # what the helpers started for sessions
        self._owners: dict[str, int | None] = {}  # session → uid: news go to it alone
        self._tasks: set[asyncio.Task[None]] = set()
        self._said: Said | None = None  # the last Hello's: user, language, screen

    # who is signed in

    def signed_in(self) -> int | None:
        chosen = self._helpers.signed_in()
        return chosen.uid if chosen is not None else None

    def signed_in_name(self) -> str:
        uid = self.signed_in()
        return user_name(uid) if uid is not None else ""

    def signed_in_language(self) -> str:
        chosen = self._helpers.signed_in()
        return chosen.language if chosen is not None else ""

    def language_of(self, uid: int | None) -> str:
        """The language ``uid``'s newest helper said ("": none said)."""
        return self._helpers.language_of(uid)

    def helper_of(self, uid: int | None) -> PacketConn | None:
        return self._helpers.newest_of(uid)

    def hello(self) -> Hello:
        self._said = self._what_to_say()
        return machine_hello(self._hostname, self._os, self._said)

    def _what_to_say(self) -> Said:
        return self.signed_in_name(), self.signed_in_language(), self._helpers.screen_said()

    def _maybe_changed(self) -> None:
        if self.service is not None and self._what_to_say() != self._said:
            self.service.say_hello()

    # programs in the user's session (channels.ShellFactory / ScreenFactory)

    def shell(
        self, channel: GatedChannel, grant: Grant, term: str, size: tuple[int, int]
    ) -> Backend:
        return self._program(channel, grant, "shell", term, size)

    def screen(self, channel: GatedChannel, grant: Grant) -> Backend:
        return self._program(channel, grant, "screen", "", (0, 0))

    def files(self, channel: GatedChannel, grant: Grant) -> Backend:
        """sftp-server, started by the user's helper as the user (root touches no file)."""
        return self._program(channel, grant, "files", "", (0, 0))

    def _program(
        self, channel: GatedChannel, grant: Grant, kind: Kind, term: str, size: tuple[int, int]
    ) -> Backend:
        read_only = kind == "files" and grant.view_only  # a helper that can (-R), or none
        conn = self._helpers.program_helper(grant.owner, read_only_files=read_only)
        return self.programs.start(conn, channel, grant, kind, term=term, size=size)

    # ConsentFrontend: prompts go to the owner's helpers only

    def prompt(self, pending: Pending) -> None:
        # The audit's prompt text in the language the owner's helper shows it in.
        pending.language = self.language_of(pending.owner)
        self._owners[pending.request.session_id] = pending.owner
        self._to_owner(pending.owner, prompt_packet(pending))

    def prompt_closed(self, session_id: str) -> None:
        if session_id not in self._owners:
            return
        self._to_owner(self._owners[session_id], hp.PromptClosed(session_id))
        granted = self.service is not None and any(
            g.session_id == session_id for g in self.service.gate.grants()
        )
        if not granted:  # denied, expired, cancelled: nothing more will be said of it
            del self._owners[session_id]

    def active(self, grant: Grant) -> None:
        organisation = self.service.config.organisation if self.service else ""
        packet = hp.Active(
            grant.session_id,
            grant.kind,
            grant.view_only,
            grant.technician,
            organisation,
            joins=grant.joins,
            mode=grant.mode,
            username=grant.username,
        )
        self._to_owner(grant.owner, packet)

    def news(self, line: NewsLine) -> None:
        """A chat message or transfer: to the session's owner's helpers alone."""
        if line.session_id in self._owners:
            packet = hp.News(line.session_id, line.kind, line.sender[:100], line.text[:MAX_CHAT])
            self._to_owner(self._owners[line.session_id], packet)

    def ended(self, session_id: str) -> None:
        if session_id in self._owners:
            self._to_owner(self._owners.pop(session_id), hp.Ended(session_id))

    def notify(self, text: str) -> None:
        """Tell whoever is signed in what IT did on this PC (a fleet job)."""
        uid = self.signed_in()
        if uid is not None:
            self._to_owner(uid, hp.Notice(text[:500]))

    def _to_owner(self, owner: int | None, packet: hp.Packet) -> None:
        for conn in self._helpers.conns_of(owner):
            conn.send(packet.encode())

    # the socket

    async def start(self) -> None:
        # the doorbell's, handed down (socket activation), else bound here
        self._inherited = inherited_listener("machine", socket.SOCK_SEQPACKET)
        listener = self._inherited or listen_at(self.path)
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        self._listener = listener
        # the session helpers the doorbell parked while this process was not running:
        # taken first, so the tunnel's Hello already names who is signed in
        for conn in adopted_connections():
            self._admit(conn)
        log.info("helper socket %s", self.path)

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._inherited is None:  # the doorbell's file stays for the next wake
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    @property
    def connections(self) -> int:
        """Session helpers and CLI clients connected now."""
        return len(self._conns)

    @property
    def clients(self) -> int:
        """Connections that are not session helpers (a CLI request, a helper that has
        not said hello yet): ``--linger`` waits for these. A helper does not keep a
        woken agent up: the doorbell parks it when this process ends."""
        return len(self._conns) - sum(1 for conn in self._conns if conn in self._helpers)

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            sock, _address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("helper socket: accept failed: %s", exc)
            return
        self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        """A new connection (accepted here, or by the doorbell and handed down)."""
        try:
            sock.setblocking(False)
            conn = PacketConn(sock, self._packet, self._closed)
        except OSError:
            sock.close()
            return
        same_uid = sum(1 for other in self._conns if other.uid == conn.uid)
        if len(self._conns) >= MAX_CONNECTIONS or same_uid >= MAX_PER_UID:
            log.warning("helper socket: refused uid %d: too many connections", conn.uid)
            conn.send(hp.answer(False, error="too many connections to the machine service"))
            conn.close()
            return
        self._conns.add(conn)
        self._idle[conn] = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, conn.close)

    def _closed(self, conn: PacketConn) -> None:
        self._conns.discard(conn)
        timer = self._idle.pop(conn, None)
        if timer is not None:
            timer.cancel()
        info = self._helpers.remove(conn)
        if info is None:
            return
        log.info("session helper of uid %d (pid %d) went away", info.uid, info.pid)
        self.programs.helper_lost(conn)
        if self.service is not None and self.helper_of(info.uid) is None:
            self.service.owner_gone(info.uid)
        self._maybe_changed()

    def _packet(self, conn: PacketConn, data: bytes, fds: list[int]) -> None:
        try:
            packet = hp.decode(data)
            if packet.type not in hp.FROM_CLIENT:
                raise ProtocolError("not a request")
        except ProtocolError as exc:
            close_fds(fds)
            log.warning("helper socket: uid %d sent a malformed packet: %s", conn.uid, exc)
            self._reply(conn, hp.answer(False, error=f"malformed request: {exc}"))
            return
        if not isinstance(packet, hp.Opened) or conn not in self._helpers:
            close_fds(fds)  # descriptors come with "opened" from a helper, or not at all
            fds = []
        if isinstance(packet, hp.AskHelp):
            task = asyncio.create_task(self._ask_help(conn, packet))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            with speaking(self.language_of(conn.uid)):  # refusals in the caller's language
                reply = self._handle(conn, packet, fds)
        except (ConsentRefused, AgentError) as exc:
            reply = hp.answer(False, error=str(exc))
        if reply is not None:
            self._reply(conn, reply)

    def _reply(self, conn: PacketConn, reply: bytes) -> None:
        conn.send(reply)
        if conn not in self._helpers:
            conn.close()  # the CLI: one request, one answer

    def _handle(self, conn: PacketConn, packet: hp.Packet, fds: list[int]) -> bytes | None:
        service = self._service()
        if isinstance(packet, hp.HelperHello):
            self._register(conn, packet)  # answers itself: the welcome comes before the prompts
            return None
        if isinstance(packet, (hp.Opened, hp.Exited)):
            self.programs.news(conn, packet, fds)
            return None
        if isinstance(packet, (hp.PendingQuery, hp.StatusQuery, hp.MessagesQuery, hp.Say)):
            return answer_query(service, packet, conn.uid, self.signed_in_name())
        if isinstance(packet, (hp.Allow, hp.Deny, hp.End)):
            return answer_decision(service, packet, conn.uid)
        raise AgentError(_("unknown request"))

    def _service(self) -> AgentService:
        if self.service is None:
            raise AgentError(_("the machine service is starting"))
        return self.service

    def _register(self, conn: PacketConn, hello: hp.HelperHello) -> None:
        if conn in self._helpers:
            raise AgentError(_("this connection is a session helper already"))
        if self._helpers.count_of(conn.uid) >= MAX_HELPERS_PER_UID:
            raise AgentError(_("too many session helpers for this user"))
        timer = self._idle.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._helpers.add(conn, hello)
        log.info("session helper of uid %d (pid %d) connected", conn.uid, conn.pid)
        service = self._service()
        welcome = hp.answer(
            True, helper=True, organisation=service.config.organisation, user=user_name(conn.uid)
        )
        conn.send(welcome)
        for pending in service.gate.pending(conn.uid):
            conn.send(prompt_packet(pending).encode())
        self._maybe_changed()

    async def _ask_help(self, conn: PacketConn, packet: hp.AskHelp) -> None:
        has_helper = self.helper_of(conn.uid) is not None
        answer = await ask_help(self._service, packet, has_helper=has_helper, uid=conn.uid)
        self._reply(conn, answer)
