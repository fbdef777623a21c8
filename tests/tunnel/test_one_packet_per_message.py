"""One SSH packet per message on the tunnel (``certs/ssh_packets.py``): no empty
MSG_IGNORE in front of each packet under the tunnel's AEAD cipher, on the
broker's connection class and on the agent's connection; under a non-AEAD
cipher the ignores still go out. The packets' random padding comes from
``os.urandom`` in blocks, not one call per packet, each byte used once; a due
rekey still happens (``certs/ssh_fastpaths.send_now``).

Real asyncssh connections on 127.0.0.1; what each end hands its transport is
counted (``_send``: one call per packet, checked against asyncssh 2.24.1).
A keystroke's echo is written one byte at a time, each awaited, so every
write is a packet of its own.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncssh
import pytest
from asyncssh.connection import SSHConnection
from sshechokit import AEAD, Server, broker_connection, count_sends, echo_server

from allowhelp.certs import ssh_fastpaths
from allowhelp.certs.ssh_fastpaths import POOL_BLOCK, RandomPool

KEYS = 200
NOT_AEAD = {"encryption_algs": ["aes128-ctr"], "mac_algs": ["hmac-sha2-256-etm@openssh.com"]}


async def plain_connection(port: int, algs: dict[str, Any]) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", port, known_hosts=None, username="x", config=None, client_keys=None, **algs
    )


async def keystrokes(conn: asyncssh.SSHClientConnection) -> tuple[int, int]:
    """Packets the client and the server sent for ``KEYS`` keystrokes and their echoes."""
    (server_conn,) = Server.connections
    reader = asyncio.Queue[bytes]()

    class Reader(asyncssh.SSHClientSession[bytes]):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            reader.put_nowait(data)

    chan, _ = await conn.create_session(Reader, encoding=None)
    client_sent, server_sent = count_sends(conn), count_sends(server_conn)
    for _ in range(KEYS):
        chan.write(b"k")
        assert await asyncio.wait_for(reader.get(), 10) == b"k"
    sent = len(client_sent), len(server_sent)
    chan.close()
    conn.close()
    await conn.wait_closed()
    return sent


async def test_plain_asyncssh_sends_an_empty_ignore_before_each_packet() -> None:
    """What ssh_packets.py removes is there (and the count can see it)."""
    async with echo_server(False, AEAD) as port:
        client, server = await keystrokes(await plain_connection(port, AEAD))
    assert (client, server) == (2 * KEYS, 2 * KEYS)


async def test_the_broker_and_the_agent_send_one_packet_per_keystroke() -> None:
    async with echo_server(True, AEAD) as port:
        client, server = await keystrokes(await broker_connection(port, AEAD))
    assert (client, server) == (KEYS, KEYS)


async def test_under_a_cipher_that_is_not_an_aead_the_ignores_still_go_out() -> None:
    async with echo_server(True, NOT_AEAD) as port:
        client, server = await keystrokes(await broker_connection(port, NOT_AEAD))
    assert (client, server) == (2 * KEYS, 2 * KEYS)


class LoggedAEAD:
    """A cipher's ``AESGCM`` that notes the padding of each packet it seals."""

    def __init__(self, sealer: Any, paddings: list[bytes]) -> None:
        self.sealer, self.paddings = sealer, paddings

    def encrypt(self, iv: bytes, packet: bytes, header: bytes) -> bytes:
        self.paddings.append(packet[len(packet) - packet[0] :])
        sealed: bytes = self.sealer.encrypt(iv, packet, header)
        return sealed


def log_padding(conn: object, paddings: list[bytes]) -> None:
    """The padding of each packet ``conn`` encrypts from now on, in order: through
    asyncssh's ``encrypt_packet`` or ``send_now``'s own sealing (the cipher's one
    ``AESGCM``, ``ssh_fastpaths.aead``)."""
    encryption = conn._send_encryption  # type: ignore[attr-defined]
    encrypt = encryption.encrypt_packet

    def logged(seq: int, header: bytes, packet: bytes) -> Any:
        paddings.append(packet[len(packet) - packet[0] :])
        return encrypt(seq, header, packet)

    encryption.encrypt_packet = logged
    cipher = encryption._cipher
    cipher._allowhelp_aead = LoggedAEAD(ssh_fastpaths.aead(cipher), paddings)


async def test_the_padding_is_random_bytes_fetched_in_blocks_each_used_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncssh calls ``os.urandom(padlen)`` (a ``getrandom``) for every packet;
    ours take the padding from blocks of ``os.urandom``, in order, none twice."""
    blocks: list[bytes] = []
    urandom = os.urandom

    def logged_urandom(size: int) -> bytes:
        data = urandom(size)
        blocks.append(data)
        return data

    async with echo_server(True, AEAD) as port:
        conn = await broker_connection(port, AEAD)
        paddings: list[bytes] = []
        log_padding(conn, paddings)
        log_padding(Server.connections[0], paddings)
        monkeypatch.setattr(ssh_fastpaths, "PADDING", RandomPool())  # none left from before
        monkeypatch.setattr(os, "urandom", logged_urandom)
        client, server = await keystrokes(conn)
        monkeypatch.undo()
    assert (client, server) == (KEYS, KEYS)
    packets = [padding for padding in paddings if len(padding) >= 4]
    assert len(packets) >= 2 * KEYS, len(paddings)
    pool = [block for block in blocks if len(block) == POOL_BLOCK]
    own = [block for block in blocks if len(block) != POOL_BLOCK]  # asyncssh's, for the close
    assert 1 <= len(pool) <= 2 and len(own) <= 2, [len(block) for block in blocks]
    block, at = pool.pop(0), 0
    for padding in packets:  # each one the next bytes of a block
        if padding in own:
            continue
        if block[at : at + len(padding)] != padding:
            block, at = pool.pop(0), 0
        assert block[at : at + len(padding)] == padding
        at += len(padding)
    assert any(packets[0] != padding for padding in packets[1:])


async def test_a_due_rekey_still_happens_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``send_now`` leaves a packet to asyncssh's ``send_packet`` once the
    connection's rekey limit is reached: the keys change and the echo goes on."""
    kexinits: list[object] = []
    send_kexinit = SSHConnection._send_kexinit

    def counted(self: SSHConnection) -> None:
        kexinits.append(self)
        send_kexinit(self)

    monkeypatch.setattr(SSHConnection, "_send_kexinit", counted)
    algs = {**AEAD, "rekey_bytes": 1024}
    async with echo_server(True, algs) as port:
        conn = await broker_connection(port, algs)
        before = len(kexinits)
        client, server = await keystrokes(conn)
    assert (client, server) >= (KEYS, KEYS)
    assert len(kexinits) - before >= 2, kexinits  # both ends rekeyed while typing
