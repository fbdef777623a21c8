"""Tunnel admission after a broker restart: connections beyond the handshakes in
progress are accepted and wait in order for a slot (not left to overflow the
kernel's backlog), and one that waited longer than its agent would is closed
unanswered instead of costing a handshake. A real listener on a real port,
real store and audit log; only the limits are lowered so the test is quick."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel import admission
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.broker.tunnel.listener import TunnelListener
from allowhelp.certs.sshkeys import generate_host_key
from allowhelp.protocol.control import Message


async def _nowhere(agent_id: str, message: Message) -> None:
    raise AssertionError("no agent gets this far here")


@pytest.fixture
async def tunnel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TunnelListener]:
    monkeypatch.setattr(admission, "MAX_STARTUPS", 1)
    monkeypatch.setattr(admission, "MAX_WAITING", 2)
    monkeypatch.setattr(admission, "MAX_WAIT", 1.0)
    generate_host_key(tmp_path / "tunnel_key")
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    listener = TunnelListener(
        db, audit, AgentRegistry(), tmp_path / "tunnel_key", _nowhere, keys=EnrolledKeys()
    )
    try:
        yield listener
    finally:
        await listener.stop()
        await db.close()
        audit.close()


async def _dial(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _first_bytes(sock: socket.socket, timeout: float) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4), timeout)


async def test_waiting_connections_are_served_in_order_or_closed_when_stale(
    tunnel: TunnelListener,
) -> None:
    port = await tunnel.start("127.0.0.1", 0)
    assert port is not None
    holder = await _dial(port, "127.0.0.2")  # takes the one handshake slot, says nothing
    assert (await _first_bytes(holder, 5)).startswith(b"SSH-")
    stale = await _dial(port, "127.0.0.3")  # accepted, waits for the slot
    with pytest.raises(TimeoutError):
        await _first_bytes(stale, 0.5)  # unanswered while it waits
    # MAX_WAIT (1 s) passes while the slot is still held: closed then, not handshaken,
    # not kept until the slot frees (an attacker holding slots would keep it for long)
    assert await _first_bytes(stale, 5) == b""
    assert tunnel.waited_too_long == 1
    holder.close()
    fresh = await _dial(port, "127.0.0.4")  # the next one gets the slot at once
    assert (await _first_bytes(fresh, 5)).startswith(b"SSH-")
    for sock in (stale, fresh):
        sock.close()


async def _until(fact: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(5):
            while not fact():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within 5 s: {what}") from None


async def test_the_waiting_room_is_bounded_then_the_backlog_holds_the_rest(
    tunnel: TunnelListener,
) -> None:
    port = await tunnel.start("127.0.0.1", 0)
    assert port is not None
    sources = [f"127.0.0.{10 + n}" for n in range(4)]
    socks = [await _dial(port, source) for source in sources]
    assert (await _first_bytes(socks[0], 5)).startswith(b"SSH-")
    # One in a handshake, two accepted and waiting: the room is full, so the
    # fourth is not accepted; it waits in the kernel's backlog.
    await _until(lambda: set(tunnel._admission.starting) == set(sources[:3]), "three admitted")
    assert not tunnel._admission.room.is_set()
    # A tunnel bridged from the HTTPS port meanwhile has no backlog to wait in: it is
    # dropped at once (its agent retries), never held outside the room's count.
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    dropped = tunnel.dropped
    tunnel.accept_stream(theirs, "127.0.0.99", "127.0.0.99:4433")
    assert await _first_bytes(ours, 5) == b""
    assert tunnel.dropped == dropped + 1 and "127.0.0.99" not in tunnel._admission.starting
    ours.close()
    socks[0].close()  # its slot goes to the next in line, in order ...
    assert (await _first_bytes(socks[1], 5)).startswith(b"SSH-")
    # ... and the fourth is taken from the backlog into the room.
    await _until(lambda: set(tunnel._admission.starting) == set(sources[1:]), "the fourth admitted")
    with pytest.raises(TimeoutError):
        await _first_bytes(socks[3], 0.5)  # still behind the third
    for sock in socks:
        sock.close()
