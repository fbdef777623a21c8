"""The tunnel's fast lane for data packets (``certs/ssh_fastlane.py``): taken for
keystrokes and echoes at both ends, and for nothing it must not take. What is
not a data packet of an open channel within its window (extended data, requests,
a window overrun, a bad tag, a packet torn across reads, a key exchange) goes
through asyncssh exactly as before, and the errors are asyncssh's own.

Real asyncssh at both ends on 127.0.0.1: the broker's connection class as the
client, the agent's connection (``send_one_packet_per_message``) as the server.
Which path a packet took is seen by counting asyncssh's ``_recv_packet``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncssh
import pytest
from asyncssh.connection import SSHConnection
from asyncssh.packet import String, UInt32
from sshechokit import AEAD, Server, broker_connection, echo_server

KEYS = 200


class Lost(asyncssh.SSHClient):
    """The broker's end of the connection; ``why`` is what closed it."""

    def __init__(self) -> None:
        self.why: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.why.set_result(exc)


async def closed_because(conn: asyncssh.SSHClientConnection) -> Exception | None:
    client = conn.get_owner()
    assert isinstance(client, Lost)
    return await asyncio.wait_for(client.why, 10)


@contextmanager
def packets_through_asyncssh() -> Iterator[list[int]]:
    """Counts the packets asyncssh's own ``_recv_packet`` completes, at both ends."""
    seen: list[int] = []
    recv_packet = SSHConnection._recv_packet

    def counted(self: SSHConnection) -> bool:
        done = recv_packet(self)
        seen.extend([1] if done else [])
        return done

    SSHConnection._recv_packet = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        SSHConnection._recv_packet = recv_packet  # type: ignore[method-assign]


class Collect(asyncssh.SSHClientSession[bytes]):
    """What the client's channel receives, in order, with its data type."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, asyncssh.DataType]] = []
        self.more = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.got.append((data, datatype))
        self.more.set()

    async def until(self, size: int) -> bytes:
        while sum(len(data) for data, kind in self.got if kind is None) < size:
            self.more.clear()
            await asyncio.wait_for(self.more.wait(), 10)
        return b"".join(data for data, kind in self.got if kind is None)


async def open_session(
    conn: asyncssh.SSHClientConnection, kind: type[Collect] = Collect, **options: Any
) -> tuple[asyncssh.SSHClientChannel[bytes], Collect]:
    chan, session = await conn.create_session(kind, encoding=None, **options)
    assert isinstance(session, Collect)
    return chan, session


def server_channel() -> Any:
    """The echo server's end of the one channel (asyncssh's, private attributes and all)."""
    (server_conn,) = Server.connections
    channels: dict[int, Any] = server_conn._channels
    (chan,) = channels.values()
    return chan


async def echoes(chan: asyncssh.SSHClientChannel[bytes], session: Collect, keys: int) -> None:
    for i in range(keys):
        chan.write(b"k")
        assert await session.until(i + 1) == b"k" * (i + 1)


def feed_in_pieces(conn: object, cut: Callable[[bytes], list[bytes]]) -> None:
    """What the socket gives ``conn`` handed to it in the pieces ``cut`` makes."""
    received: Callable[[bytes], None] = conn.data_received  # type: ignore[attr-defined]

    def pieces(data: bytes) -> None:
        for piece in cut(data):
            received(piece)

    conn.data_received = pieces  # type: ignore[attr-defined]
    conn._transport.set_protocol(conn)  # type: ignore[attr-defined]  # uvloop caches the method


async def test_keystrokes_and_echoes_take_the_lane_at_both_ends() -> None:
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        chan, session = await open_session(conn)
        with packets_through_asyncssh() as seen:
            await echoes(chan, session, KEYS)
        conn.close()
    assert len(seen) < KEYS // 10, len(seen)  # window adjusts at most, not the data


async def test_without_the_lane_asyncssh_takes_every_packet() -> None:
    """The count can see the difference: plain asyncssh's server and client."""
    async with echo_server(False, AEAD) as port:
        conn = await asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="x", config=None, **AEAD
        )
        chan, session = await open_session(conn)
        with packets_through_asyncssh() as seen:
            await echoes(chan, session, KEYS)
        conn.close()
    assert len(seen) >= 2 * KEYS


async def test_asyncssh_logging_data_turns_the_lane_off() -> None:
    asyncssh.set_debug_level(2)
    try:
        async with echo_server(True, AEAD) as port:
            conn = await broker_connection(port, AEAD)
            chan, session = await open_session(conn)
            with packets_through_asyncssh() as seen:
                await echoes(chan, session, 50)
            conn.close()
    finally:
        asyncssh.set_debug_level(1)
    assert len(seen) >= 100


async def test_stderr_and_requests_among_data_keep_their_order_and_kind() -> None:
    """One read holds data, extended data, data, an exit status and EOF: the lane
    takes the first data packet and leaves the rest, in order, to asyncssh."""
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        chan, session = await open_session(conn)
        await echoes(chan, session, 3)
        server_chan = server_channel()
        server_chan.write(b"a")
        server_chan.write_stderr(b"e")
        server_chan.write(b"b")
        server_chan.exit(3)
        await asyncio.wait_for(chan.wait_closed(), 10)
        conn.close()
    assert session.got[3:] == [(b"a", None), (b"e", asyncssh.EXTENDED_DATA_STDERR), (b"b", None)]
    assert chan.get_exit_status() == 3


@pytest.mark.parametrize("size", [1, 7, 16, 29])
async def test_packets_torn_across_reads_arrive_whole_and_in_order(size: int) -> None:
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        chan, session = await open_session(conn)
        feed_in_pieces(conn, lambda data: [data[i : i + size] for i in range(0, len(data), size)])
        await echoes(chan, session, 50)
        chan.write(bytes(range(256)) * 40)  # 10 KiB back in several packets
        assert (await session.until(50 + 10240))[50:] == bytes(range(256)) * 40
        conn.close()


async def test_a_tampered_packet_is_refused_as_asyncssh_refuses_it() -> None:
    """A flipped bit in an echo: the lane delivers nothing of it and asyncssh
    closes the connection on the MAC failure, as it would without the lane."""
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD, Lost)
        chan, session = await open_session(conn)
        await echoes(chan, session, 3)
        tamper = [True]

        def flip(data: bytes) -> list[bytes]:
            if tamper and len(data) > 20:
                tamper.clear()
                return [data[:20] + bytes([data[20] ^ 1]) + data[21:]]
            return [data]

        feed_in_pieces(conn, flip)
        chan.write(b"k")
        why = await closed_because(conn)
    assert isinstance(why, asyncssh.Error) and "MAC verification failed" in str(why)
    assert b"".join(data for data, _ in session.got) == b"kkk"


async def test_data_beyond_the_window_is_refused_as_asyncssh_refuses_it() -> None:
    """The agent's end ignoring the broker's window: the lane does not take the
    packet; asyncssh closes the connection ("Window exceeded")."""
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD, Lost)
        chan, session = await open_session(conn, window=4096)
        await echoes(chan, session, 3)
        server_chan = server_channel()
        server_chan._send_window = 1 << 30  # a peer that does not keep to the window
        server_chan.write(b"x" * 8000)
        why = await closed_because(conn)
    assert isinstance(why, asyncssh.ProtocolError) and "Window exceeded" in str(why)
    assert len(b"".join(data for data, _ in session.got)) < 3 + 4096


async def test_an_error_in_the_session_closes_the_connection_not_the_loop() -> None:
    failed: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: failed.append(context))

    class Broken(Collect):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            if data == b"boom":
                raise RuntimeError("the session broke")
            super().data_received(data, datatype)

    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD, Lost)
        chan, session = await open_session(conn, Broken)
        await echoes(chan, session, 3)
        chan.write(b"boom")
        why = await closed_because(conn)
    assert isinstance(why, RuntimeError) and str(why) == "the session broke"
    assert not [context for context in failed if "session broke" in repr(context)]


async def test_key_exchanges_in_the_middle_of_the_echoes() -> None:
    """Rekeys every few KiB, started by either end: the lane steps aside for each
    key exchange and opens the packets with the new keys after it."""
    small = {**AEAD, "rekey_bytes": 4096}
    async with echo_server(True, small) as port:
        conn = await broker_connection(port, small)
        chan, session = await open_session(conn)
        (server_conn,) = Server.connections
        first, server_first = conn._recv_encryption, server_conn._recv_encryption
        with packets_through_asyncssh() as seen:
            await echoes(chan, session, 600)
        assert conn._recv_encryption is not first  # new keys at both ends
        assert server_conn._recv_encryption is not server_first
        conn.close()
    assert len(seen) < 600  # the key exchanges' packets, not the echoes


async def test_a_write_behind_a_full_window_keeps_its_place() -> None:
    """``write_data`` goes out at once only when nothing waits in the channel's
    send buffer: a small write after a large one held by the window comes after it."""
    from allowhelp.certs.ssh_fastlane import write_data

    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        _, session = await open_session(conn)
        server_chan = server_channel()
        big = bytes(range(256)) * 12288  # 3 MiB, more than the client's window
        write_data(server_chan, big)
        assert server_chan._send_buf  # held: the window is full
        write_data(server_chan, b"after")
        assert (await session.until(len(big) + 5)) == big + b"after"
        conn.close()


async def test_the_window_is_adjusted_while_the_lane_delivers() -> None:
    """The lane hands each packet to ``_accept_data``, whose window adjusts go out
    as they fall due: with a 1 KiB window at both ends, eight windows' worth of
    echoes, one small packet each way at a time, get through only if they do at
    both ends (else ``until`` times out)."""
    small = {**AEAD, "window": 1024}  # the echo server's channels too
    async with echo_server(True, small) as port:
        conn = await broker_connection(port, AEAD)
        chan, session = await open_session(conn, window=1024)
        server_chan = server_channel()
        assert server_chan._init_recv_window == 1024
        piece = bytes(range(97, 97 + 64))
        with packets_through_asyncssh() as seen:
            for i in range(128):  # 8 KiB
                chan.write(piece)
                assert await session.until(64 * (i + 1)) == piece * (i + 1)
        conn.close()
    assert len(seen) < 64  # the adjusts and their like, not the data


async def test_data_waits_while_the_session_does_not_read() -> None:
    """``pause_reading``: what the lane takes meanwhile is kept by asyncssh until
    reading resumes, in order, before anything newer."""
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        chan, session = await open_session(conn)
        await echoes(chan, session, 2)
        chan.pause_reading()
        chan.write(b"held")
        for _ in range(500):  # until the echo has come and waits in asyncssh
            if chan._recv_buf:
                break
            await asyncio.sleep(0.01)
        assert chan._recv_buf
        assert b"".join(data for data, _ in session.got) == b"kk"
        chan.resume_reading()
        chan.write(b"after")
        assert await session.until(11) == b"kkheldafter"
        conn.close()


def server_sends(payload: tuple[bytes, ...]) -> None:
    """A data packet of the echo server's own making, sealed and sent as any other."""
    from asyncssh.constants import MSG_CHANNEL_DATA

    from allowhelp.certs.ssh_fastpaths import send_now

    (server_conn,) = Server.connections
    assert send_now(server_conn, MSG_CHANNEL_DATA, payload)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda chan: (UInt32(chan._send_chan), UInt32(5), b"ab"), "Incomplete packet"),
        (lambda chan: (UInt32(999), String(b"x")), "Invalid channel number 999"),
        (lambda chan: (UInt32(chan._send_chan), String(b"x")), "Channel not open for sending"),
    ],
    ids=["length-past-the-end", "unknown-channel", "after-eof"],
)
async def test_a_malformed_data_packet_is_refused_as_asyncssh_refuses_it(
    make: Callable[[Any], tuple[bytes, ...]], why: str
) -> None:
    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD, Lost)
        chan, session = await open_session(conn)
        await echoes(chan, session, 3)
        server_chan = server_channel()
        if "open" in why:
            server_chan.write_eof()
            await asyncio.sleep(0.05)
        server_sends(make(server_chan))
        closed = await closed_because(conn)
    assert isinstance(closed, asyncssh.ProtocolError) and why in str(closed), closed
    assert b"".join(data for data, _ in session.got) == b"kkk"


async def test_nothing_more_of_a_read_is_delivered_once_it_closed_the_connection() -> None:
    """A session that closes the connection on what it was given: the rest of that
    read (three packets in one) stays undelivered."""

    class Closing(Collect):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            super().data_received(data, datatype)
            if data == b"stop":
                conn.close()

    held: list[bytes] = []

    def hold(data: bytes) -> list[bytes]:  # what arrives within 0.1 s, as one read
        held.append(data)
        return []

    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD, Lost)
        chan, session = await open_session(conn, Closing)
        await echoes(chan, session, 3)
        received = conn.data_received
        feed_in_pieces(conn, hold)
        server_chan = server_channel()
        for data in (b"a", b"stop", b"b"):
            server_chan.write(data)
        await asyncio.sleep(0.1)
        assert len(held) == 1  # one read: the three packets together
        received(held[0])
        await closed_because(conn)
    assert [data for data, _ in session.got[3:]] == [b"a", b"stop"]
