"""One connected agent as the broker sees it: its SSH connection and control channel.

The broker opens the control channel as soon as the tunnel is up. Lines from
the agent are decoded (and so checked) here, then handed in order to one
dispatcher; a line that breaks the protocol closes the whole tunnel, because
only a broken or hostile agent sends one.

A broker holds one of these per connected PC, and nearly all of them sit idle,
so an idle link owns nothing but its attributes: no queue, no event, no task.
A worker task and an inbox exist only while messages wait (measured with
``bench --only memory``: an ``asyncio.Queue``, an ``Event`` and a parked task
cost about 5 KiB per agent, mostly empty deques).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import asyncssh
from asyncssh.sftp import MIN_SFTP_VERSION, start_sftp_client

from allowhelp.broker.errors import TunnelError
from allowhelp.certs import ssh_options
from allowhelp.protocol.control import LineBuffer, Message, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM, Kind, channel_subsystem
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

Dispatcher = Callable[[str, Message], Awaitable[None]]
S = TypeVar("S", bound=asyncssh.SSHClientSession[bytes])
QUEUE_LIMIT = 100


class _ControlSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, link: AgentLink) -> None:
        self._link = link
        self._lines = LineBuffer()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            for line in self._lines.feed(data):
                self._link.received(decode(line))
        except ProtocolError as exc:
            self._link.violation(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.control_lost()


class Ready:
    """A flag that can be set once and awaited: ``asyncio.Event`` without its
    per-instance deque, because nearly every link is set and never waited on."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Return once set; one future per waiter, so cancelling one (a
        ``wait_for`` timeout) does not wake or cancel the others."""
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class AgentLink:
    """One connected agent: its control channel, and the way to open session
    channels. Slots, because the broker keeps one per PC, tens of thousands."""

    __slots__ = ("_chan", "_closed", "_conn", "_dispatch", "_inbox", "_worker", "agent_id", "ready")

    def __init__(
        self, agent_id: str, conn: asyncssh.SSHClientConnection, dispatcher: Dispatcher
    ) -> None:
        self.agent_id = agent_id
        self._conn = conn
        self._dispatch = dispatcher
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._inbox: deque[Message] | None = None  # only while messages wait
        self._worker: asyncio.Task[None] | None = None  # only while messages wait
        self._closed = False
        self.ready = Ready()  # set once the control channel is open

    async def open(self) -> None:
        try:
            self._chan, _ = await self._conn.create_session(
                lambda: _ControlSession(self), subsystem=CONTROL_SUBSYSTEM, encoding=None
            )
        except (asyncssh.Error, OSError) as exc:
            log.error("agent=%s control channel refused: %s", self.agent_id, exc)
            self.close()
            return
        self.ready.set()
        self._wake()  # lines may have arrived before create_session returned

    def send(self, message: Message) -> None:
        if self._chan is None or self._chan.is_closing():
            raise TunnelError("the agent's control channel is not open")
        self._chan.write(message.encode())

    def received(self, message: Message) -> None:
        """Queue a message for the dispatcher, in order; more than
        ``QUEUE_LIMIT`` waiting is a protocol violation (a flood)."""
        if self._closed:
            return
        if self._inbox is None:
            self._inbox = deque()
        if len(self._inbox) >= QUEUE_LIMIT:
            self.violation("too many control messages at once")
            return
        self._inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        """Start the worker if messages wait, the channel is open and none runs."""
        if self._worker is None and self._inbox and self._chan is not None and not self._closed:
            self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        """Dispatch until the inbox is empty, then go away. The emptiness check
        and the hand-back happen with no ``await`` between them, so a message
        that arrives later always finds no worker and starts a new one."""
        inbox = self._inbox
        while inbox:
            message = inbox.popleft()
            try:
                await self._dispatch(self.agent_id, message)
            except Exception:
                log.exception(
                    "agent=%s message %s could not be handled", self.agent_id, message.type
                )
        self._worker = None
        self._inbox = None

    def violation(self, what: str) -> None:
        log.error(
            "agent=%s broke the control protocol (%s): closing its tunnel", self.agent_id, what
        )
        self.close()

    def control_lost(self) -> None:
        if not self._conn.is_closed():
            log.warning("agent=%s closed its control channel: closing the tunnel", self.agent_id)
            self.close()

    async def open_channel(
        self,
        factory: Callable[[], S],
        kind: Kind,
        session_id: str,
        *,
        term: tuple[str, int, int] | None = None,
        window: int = ssh_options.CHANNEL_WINDOW,
    ) -> tuple[asyncssh.SSHClientChannel[bytes], S]:
        """Open a shell or screen channel; the agent opens it only under a live grant."""
        options: dict[str, object] = {}
        if term is not None:
            options = {"term_type": term[0], "term_size": (term[1], term[2])}
        try:
            chan, session = await self._conn.create_session(
                factory,
                subsystem=channel_subsystem(kind, session_id),
                encoding=None,
                window=window,
                max_pktsize=ssh_options.CHANNEL_PACKET_SIZE,
                **options,  # type: ignore[arg-type]
            )
        except asyncssh.ChannelOpenError as exc:
            raise TunnelError(f"the agent refused the {kind} channel: {exc.reason}") from exc
        except (asyncssh.Error, OSError) as exc:
            raise TunnelError(f"the agent could not open the {kind} channel: {exc}") from exc
        return cast("asyncssh.SSHClientChannel[bytes]", chan), cast(S, session)

    async def open_sftp(self, session_id: str) -> asyncssh.SFTPClient:
        """Open a files session's one channel and speak SFTP (version 3) on it.

        asyncssh's own ``start_sftp_client`` opens the subsystem ``sftp``; the
        agent takes SFTP only on ``allowhelp.files/<session>`` (under a grant),
        so the channel is opened here and handed to asyncssh's SFTP client."""
        try:
            writer, reader, stderr = await self._conn.open_session(
                subsystem=channel_subsystem("files", session_id),
                encoding=None,
                window=ssh_options.CHANNEL_WINDOW,
                max_pktsize=ssh_options.CHANNEL_PACKET_SIZE,
            )
        except asyncssh.ChannelOpenError as exc:
            raise TunnelError(f"the agent refused the files channel: {exc.reason}") from exc
        except (asyncssh.Error, OSError) as exc:
            raise TunnelError(f"the agent could not open the files channel: {exc}") from exc
        try:
            return await start_sftp_client(
                self._conn,
                asyncio.get_running_loop(),
                "strict",
                reader,
                writer,
                None,  # paths are bytes both ways: the broker encodes and decodes them
                "strict",
                MIN_SFTP_VERSION,
            )
        except (asyncssh.Error, OSError, EOFError) as exc:
            # The agent says why on the channel's stderr (no sftp-server, refused as root).
            said = b""
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                said = await asyncio.wait_for(stderr.read(1000), 2)
            why = plain_text(said.decode("utf-8", "replace"), 300) if said else str(exc)
            raise TunnelError(f"the PC could not open its files: {why}") from exc

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._inbox = None
        self._conn.close()
