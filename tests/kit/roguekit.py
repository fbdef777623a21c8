"""A rogue broker's tools: the SSH client side, holding the broker's own (stolen) key;
and a rogue agent's: an enrolled agent's own key, saying what it should not.

Shared by the gate tests of the per-user agent and of the machine service, and by
the tests of what the broker accepts from an agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import asyncssh

from allowhelp.certs import ssh_options
from allowhelp.certs.sshkeys import load_private_key
from allowhelp.protocol.control import ConsentRequest
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM, Kind
from harness import Broker, wait_for


class Sink(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.data = b""
        self.closed = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class TcpSink(asyncssh.SSHTCPSession[bytes]):
    """The session of a direct-tcpip channel; the agent never lets one open."""


class UnixSink(asyncssh.SSHUNIXSession[bytes]):
    """The session of a direct-streamlocal channel; the agent never lets one open."""


def as_sink(
    opened: tuple[asyncssh.SSHClientChannel[Any], asyncssh.SSHClientSession[Any]],
) -> tuple[asyncssh.SSHClientChannel[bytes], Sink]:
    """What ``create_session(Sink, encoding=None)`` gave: asyncssh types the session
    as its base class, whatever the factory made."""
    chan, session = opened
    return chan, cast(Sink, session)


async def refused(coro: Awaitable[object]) -> bool:
    try:
        await asyncio.wait_for(coro, 10)
    except (asyncssh.ChannelOpenError, asyncssh.ChannelListenError, asyncssh.Error):
        return True
    return False


def ask(chan: asyncssh.SSHClientChannel[bytes], session_id: str, kind: Kind) -> None:
    """What a (rogue) broker may do on the control channel: ask, nothing more."""
    request = ConsentRequest(
        session_id=session_id,
        organisation="Org",
        technician="Mallory",
        kind=kind,
        reason="test",
        phrase="a b c",
        timeout=30,
    )
    chan.write(request.encode())


async def control(
    conn: asyncssh.SSHClientConnection,
) -> tuple[asyncssh.SSHClientChannel[bytes], Sink]:
    return as_sink(await conn.create_session(Sink, subsystem=CONTROL_SUBSYSTEM, encoding=None))


@asynccontextmanager
async def stolen_key_connection(broker: Broker) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """The agent's next connection, accepted on ``broker``'s tunnel port (the broker
    stopped) with the broker's own key, as whoever stole it would."""
    arrived: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
    options = asyncssh.SSHClientConnectionOptions(
        username=ssh_options.BROKER_USERNAME,
        client_keys=[load_private_key(broker.data / "tunnel_key")],
        known_hosts=None,
        agent_path=None,
    )
    port = int(broker.tunnel.rpartition(":")[2])
    server = await asyncssh.listen_reverse(
        "127.0.0.1", port, options=options, config=None, acceptor=arrived.put_nowait
    )
    conn = await asyncio.wait_for(arrived.get(), 30)
    try:
        yield conn
    finally:
        conn.close()
        server.close()
        await server.wait_closed()


class _RogueSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CONTROL_SUBSYSTEM

    def session_started(self) -> None:
        for line in self._lines:
            self._chan.write(line)


class RogueServer(asyncssh.SSHServer):
    """An enrolled agent's key, saying on the control channel what it should not."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    def begin_auth(self, username: str) -> bool:
        return False  # the rogue trusts whoever dialled back: it is the broker

    def session_requested(self) -> _RogueSession:
        return _RogueSession(self._lines)


async def rogue_agent_says(
    config: Path, lines: list[bytes], judged: Callable[[], bool], what: str
) -> None:
    """Dial the broker as the agent enrolled in ``config`` (its own key), send
    ``lines`` on the control channel, and hang up once ``judged()`` (15 s at most)."""
    enrolled = json.loads((config / "agent.json").read_text())
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[load_private_key(config / "host_key")],
        server_factory=lambda: RogueServer(lines),
        encoding=None,
    )
    conn = await asyncssh.connect_reverse(
        enrolled["tunnel_host"], enrolled["tunnel_port"], config=None, options=options
    )
    try:
        await asyncio.to_thread(wait_for, judged, 15, what)
    finally:
        conn.close()
