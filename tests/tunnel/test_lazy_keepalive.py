"""The tunnel's keepalive timer, not re-armed per packet (``certs/ssh_fastpaths.py``),
on the broker's connection class and on the agent's connection: while packets
arrive it stays quiet; once they stop it asks, and a peer that does not answer
is dropped; asyncssh's packet logging still logs at its debug level 3.

Real asyncssh connections on 127.0.0.1 through a TCP relay the test can cut
(it drops what it is given: a link gone dead without a FIN). The other end is
plain asyncssh without keepalives of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest

from allowhelp.broker.tunnel.sshclient import client_options, start_client
from allowhelp.certs.ssh_packets import send_one_packet_per_message

INTERVAL = 0.2
COUNT_MAX = 2
Conn = asyncssh.SSHClientConnection | asyncssh.SSHServerConnection


class Sink(asyncssh.SSHServerSession[bytes]):
    chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return True


@dataclass
class Link:
    lazy: Conn  # the end under test
    plain: Conn
    chan: Any  # the plain end's channel, to send on
    lost: asyncio.Future[Exception | None]  # the lazy end's connection_lost
    cut: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def relay(port: int, cut: asyncio.Event) -> AsyncIterator[int]:
    """127.0.0.1 TCP relay to ``port``; once ``cut`` is set it forwards nothing."""
    tasks: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if not cut.is_set():
                dst.write(data)

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writers.extend([writer, up_writer])
        tasks.extend(
            [
                asyncio.create_task(pump(reader, up_writer)),
                asyncio.create_task(pump(up_reader, writer)),
            ]
        )

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in tasks:
            task.cancel()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def link(lazy_end: str) -> AsyncIterator[Link]:
    """A connection whose ``lazy_end`` ("broker" or "agent") keeps the keepalive."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[Exception | None] = loop.create_future()
    servers: list[asyncssh.SSHServerConnection] = []
    sessions: list[Any] = []
    keepalive = {"keepalive_interval": INTERVAL, "keepalive_count_max": COUNT_MAX}

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            servers.append(conn)

        def connection_lost(self, exc: Exception | None) -> None:
            if lazy_end == "agent" and not lost.done():
                lost.set_result(exc)

        def begin_auth(self, username: str) -> bool:
            return False

        def session_requested(self) -> Sink:
            session = Sink()
            sessions.append(session)
            return session

    class Client(asyncssh.SSHClient):
        def connection_lost(self, exc: Exception | None) -> None:
            if lazy_end == "broker" and not lost.done():
                lost.set_result(exc)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=Server,
        encoding=None,
        config=None,
        **(keepalive if lazy_end == "agent" else {}),
    )
    cut = asyncio.Event()
    async with relay(server.sockets[0].getsockname()[1], cut) as port:
        options = asyncssh.SSHClientConnectionOptions(
            options=client_options(asyncssh.generate_private_key("ssh-ed25519"), Client),
            known_hosts=None,
            **(keepalive if lazy_end == "broker" else {"keepalive_interval": 0}),
        )
        finished: asyncio.Future[None] = loop.create_future()
        _, client = await loop.create_connection(
            lambda: start_client(loop, options, finished, "127.0.0.1"), "127.0.0.1", port
        )
        await asyncio.wait_for(finished, 10)
        assert isinstance(client, asyncssh.SSHClientConnection)
        (agent,) = servers
        if lazy_end == "agent":
            send_one_packet_per_message(agent)  # as the agent does, once connected
        chan, _ = await client.create_session(asyncssh.SSHClientSession, encoding=None)
        server_chan = sessions[0].chan
        lazy, plain = (client, agent) if lazy_end == "broker" else (agent, client)
        try:
            yield Link(lazy, plain, server_chan if lazy_end == "broker" else chan, lost, cut)
        finally:
            client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.wait_closed(), 5)
            server.close()
            await server.wait_closed()


def count_sends(conn: object) -> list[bytes]:
    """What ``conn`` hands its transport from now on (one call per packet)."""
    sent: list[bytes] = []
    send: Callable[[bytes], None] = conn._send  # type: ignore[attr-defined]

    def counted(data: bytes) -> None:
        sent.append(data)
        send(data)

    conn._send = counted  # type: ignore[attr-defined]
    return sent


@pytest.mark.parametrize("lazy_end", ["broker", "agent"])
async def test_traffic_holds_the_keepalive_back_and_silence_brings_it(lazy_end: str) -> None:
    async with link(lazy_end) as made:
        sent = count_sends(made.lazy)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5 * INTERVAL
        while loop.time() < end:  # a keystroke every fifth of the interval
            made.chan.write(b"k")
            await asyncio.sleep(INTERVAL / 5)
        assert sent == [], "a keepalive went out while packets kept coming"
        for _ in range(100):  # silence: the keepalive asks, the peer answers
            if len(sent) >= 2:
                break
            await asyncio.sleep(INTERVAL / 5)
        assert len(sent) >= 2
        assert not made.lost.done()  # answered: the link stays


@pytest.mark.parametrize("lazy_end", ["broker", "agent"])
async def test_a_peer_that_stops_answering_is_dropped(lazy_end: str) -> None:
    async with link(lazy_end) as made:
        made.chan.write(b"k")  # a packet received: the timer re-arms itself for it
        await asyncio.sleep(INTERVAL / 2)
        made.cut.set()
        began = asyncio.get_running_loop().time()
        exc = await asyncio.wait_for(made.lost, 10 * INTERVAL * (COUNT_MAX + 1))
        took = asyncio.get_running_loop().time() - began
        assert isinstance(exc, asyncssh.ConnectionLost) and "keepalive" in str(exc)
        assert took >= INTERVAL * COUNT_MAX  # not before its count of missed answers


async def test_packet_logging_still_logs_at_debug_level_3(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    asyncssh.set_debug_level(3)
    try:
        async with link("broker") as made:
            made.chan.write(b"k")
            await asyncio.sleep(INTERVAL / 2)
    finally:
        asyncssh.set_debug_level(1)
    logged = [r.getMessage() for r in caplog.records]
    assert any("] Sent MSG_CHANNEL_DATA (94), 10 bytes" in m for m in logged)
    assert any("] Received MSG_CHANNEL_DATA (94), 10 bytes" in m for m in logged)
    caplog.clear()
    async with link("broker") as made:  # below level 3: none
        made.chan.write(b"k")
        await asyncio.sleep(INTERVAL / 2)
    assert not [r for r in caplog.records if "MSG_CHANNEL_DATA" in r.getMessage()]


@pytest.mark.parametrize("lazy_end", ["broker", "agent"])
async def test_a_new_keepalive_setting_applies_from_now(lazy_end: str) -> None:
    """``set_keepalive`` at run time: none means no keepalive is ever sent; a
    shorter interval is armed at once (the lazy timer kept the old one)."""
    async with link(lazy_end) as made:
        sent = count_sends(made.lazy)
        made.lazy.set_keepalive(0)
        assert made.lazy._keepalive_timer is None
        await asyncio.sleep(3 * INTERVAL)
        assert sent == [], "a keepalive went out after keepalives were turned off"
        made.lazy.set_keepalive(INTERVAL / 4)
        timer = made.lazy._keepalive_timer
        assert timer is not None
        loop = asyncio.get_running_loop()
        assert timer.when() - loop.time() <= INTERVAL / 4 + 0.01
