"""One connected agent as the broker sees it: its SSH connection and control channel.

The broker opens the control channel as soon as the tunnel is up. Lines from
the agent are decoded (and so checked) here, then handed in order to one
dispatcher; a line that breaks the protocol closes the whole tunnel, because
only a broken or hostile agent sends one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import asyncssh

from allowhelp.protocol.control import (
    CONTROL_SUBSYSTEM,
    Kind,
    LineBuffer,
    Message,
    ProtocolError,
    channel_subsystem,
    decode,
)

from .errors import TunnelError

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


class AgentLink:
    def __init__(
        self, agent_id: str, conn: asyncssh.SSHClientConnection, dispatcher: Dispatcher
    ) -> None:
        self.agent_id = agent_id
        self._conn = conn
        self._dispatch = dispatcher
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(QUEUE_LIMIT)
        self._worker: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def open(self) -> None:
        try:
            self._chan, _ = await self._conn.create_session(
                lambda: _ControlSession(self), subsystem=CONTROL_SUBSYSTEM, encoding=None
            )
        except (asyncssh.Error, OSError) as exc:
            log.error("agent=%s control channel refused: %s", self.agent_id, exc)
            self.close()
            return
        self._worker = asyncio.create_task(self._work())
        self.ready.set()

    def send(self, message: Message) -> None:
        if self._chan is None or self._chan.is_closing():
            raise TunnelError("the agent's control channel is not open")
        self._chan.write(message.encode())

    def received(self, message: Message) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self.violation("too many control messages at once")

    async def _work(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._dispatch(self.agent_id, message)
            except Exception:
                log.exception(
                    "agent=%s message %s could not be handled", self.agent_id, message.type
                )

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
        window: int = 2 * 1024 * 1024,
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
                **options,  # type: ignore[arg-type]
            )
        except asyncssh.ChannelOpenError as exc:
            raise TunnelError(f"the agent refused the {kind} channel: {exc.reason}") from exc
        except (asyncssh.Error, OSError) as exc:
            raise TunnelError(f"the agent could not open the {kind} channel: {exc}") from exc
        return cast("asyncssh.SSHClientChannel[bytes]", chan), cast(S, session)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._conn.close()
