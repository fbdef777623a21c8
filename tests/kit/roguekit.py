"""A rogue broker's tools: the SSH client side, holding the broker's own (stolen) key.

Shared by the gate tests of the per-user agent and of the machine service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

import asyncssh

from allowhelp.protocol.control import CONTROL_SUBSYSTEM, ConsentRequest, Kind


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
