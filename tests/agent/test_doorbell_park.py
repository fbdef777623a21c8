"""The doorbell's parked session helpers (``agent/doorbellpark.py``), on real sockets.

A helper's hello is left unread and the connection kept for the next full agent;
any other first packet needs the full agent now; a client that hangs up or says
nothing is dropped; everything still held is handed over in one list."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.agent import doorbellpark
from allowhelp.agent.doorbellpark import HelperPark, is_helper_hello

HELLO = json.dumps({"type": "helper", "language": "fr"}).encode()
QUERY = json.dumps({"type": "pending"}).encode()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(tmp_path / "agent.sock"))
    sock.listen()
    sock.setblocking(False)
    yield sock
    sock.close()


def client(listener: socket.socket) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(listener.getsockname())
    return sock


def test_only_a_helpers_hello_is_parked() -> None:
    assert is_helper_hello(HELLO)
    assert not is_helper_hello(QUERY)
    assert not is_helper_hello(b"\xff not json")
    assert not is_helper_hello(b'["helper"]')


def test_a_helper_waits_and_a_request_needs_the_full_agent(listener: socket.socket) -> None:
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    helper, asker, quiet = client(listener), client(listener), client(listener)
    try:
        park.accept(listener)
        assert len(park.unsaid) == 3
        helper.send(HELLO)
        asker.send(QUERY)
        accepted = list(park.unsaid)
        wakes = [park.first_packet(conn) for conn in accepted[:2]]
        assert sorted(wakes) == [False, True]  # the helper waits, the request wakes
        assert len(park.parked) == 2 and len(park.unsaid) == 1
        for conn in park.parked:  # peeked, not read: the full agent reads it
            assert conn.recv(100, socket.MSG_PEEK) in (HELLO, QUERY)
        handed = park.hand_over()
        assert len(handed) == 3 and not park.parked and not park.unsaid
        assert not selector.get_map()  # nothing of theirs is watched any more
        for conn in handed:
            conn.close()
    finally:
        for sock in (helper, asker, quiet):
            sock.close()
        selector.close()


def test_a_hang_up_or_silence_is_dropped(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    gone = client(listener)
    quiet: socket.socket | None = None
    try:
        park.accept(listener)
        (first,) = park.unsaid
        gone.close()
        assert park.first_packet(first) is False  # hung up before a word: dropped
        assert not park.parked and not park.unsaid
        quiet = client(listener)
        park.accept(listener)
        assert len(park.unsaid) == 1
        monkeypatch.setattr(doorbellpark, "FIRST_PACKET_WAIT", 0.0)
        time.sleep(0.01)
        park.expire()
        assert not park.unsaid and not selector.get_map()
    finally:
        if quiet is not None:
            quiet.close()
        selector.close()


def test_no_more_than_the_machine_service_would_take(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doorbellpark, "MAX_ADOPTED", 2)
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    clients = [client(listener) for _ in range(3)]
    try:
        park.accept(listener)
        assert park.full and len(park.unsaid) == 2  # the third waits in the backlog
        park.close()
        assert not park.unsaid and not selector.get_map()
    finally:
        for sock in clients:
            sock.close()
        selector.close()
