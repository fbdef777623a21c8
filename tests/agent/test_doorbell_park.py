"""The doorbell's parked session helpers (``agent/doorbellpark.py``), on real sockets.

A helper's hello is left unread and the connection kept for the next full agent;
any other first packet needs the full agent now; a client that hangs up or says
nothing is dropped; everything still held is handed over in one list."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.agent import doorbellfresh, doorbellpark
from allowhelp.agent.doorbellfresh import FreshHello
from allowhelp.agent.doorbellkey import HELLO_FILE
from allowhelp.agent.doorbellpark import (
    HELLO_FLAGS,
    HELLO_TEXT,
    MAX_HELPER_DEPTH,
    MAX_HELPER_PACKET,
    HelperPark,
    helper_said,
    is_helper_hello,
)
from allowhelp.protocol import helper as helper_protocol
from allowhelp.protocol.hostile_json import ProtocolError
from harness import wait_for

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


@pytest.mark.parametrize(
    "first",
    [
        b"[" * 2000,  # deeper than json goes: RecursionError, which is no ValueError
        b'{"type": "helper", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        json.dumps({"type": "helper", "monitors": "x" * 20_000}).encode(),  # too long
    ],
)
def test_a_hostile_first_packet_wakes_the_full_agent_and_never_escapes(
    listener: socket.socket, first: bytes
) -> None:
    """Any local user may connect to the machine socket (0666): what they send first
    must not end the root service (it did: one deep packet, a traceback, the PC
    unreachable while a loop repeated it). It is no helper's hello; the full agent,
    woken for it, refuses it with its own decoder."""
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    hostile = client(listener)
    try:
        park.accept(listener)
        hostile.send(first)
        (conn,) = list(park.unsaid)
        assert park.first_packet(conn) is True
        assert not park.helpers and not park.changed  # it names nobody signed in
        for handed in park.hand_over():
            handed.close()
    finally:
        hostile.close()
        selector.close()


def test_the_packet_bound_is_the_machine_services() -> None:
    assert MAX_HELPER_PACKET == helper_protocol.MAX_PACKET
    assert MAX_HELPER_DEPTH == helper_protocol.MAX_DEPTH
    # the hello's fields and their limits are the helper socket's own (a copy: that
    # module is not for the idle process)
    rules = helper_protocol._RULES
    said = {f.name for f in dataclasses.fields(helper_protocol.HelperHello)}
    assert set(HELLO_TEXT) | set(HELLO_FLAGS) == said
    texts = said - set(HELLO_FLAGS)
    assert {name: rules.texts.get(name, rules.text) for name in texts} == HELLO_TEXT


def test_a_hello_the_machine_service_would_refuse_names_nobody() -> None:
    """What the park takes for a helper's hello is what the hub's decoder takes:
    else the console would name a user, then lose them at the wake."""
    deep = b'{"type": "helper", "language": "fr", "x": [[[1]]]}'
    with pytest.raises(ProtocolError):
        helper_protocol.decode(deep)
    assert helper_said(deep) is None
    assert helper_said('{"type": "helper", "language": "fr"}'.encode("utf-16")) is None
    assert helper_said(HELLO) is not None
    flagged = b'{"type": "helper", "language": "fr", "files_view_only": "yes"}'
    with pytest.raises(ProtocolError):
        helper_protocol.decode(flagged)
    assert helper_said(flagged) is None


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


def test_what_a_parked_helper_said_is_kept_and_its_hang_up_seen(listener: socket.socket) -> None:
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    helper = client(listener)
    try:
        park.accept(listener)
        helper.send(json.dumps({"type": "helper", "language": "fr", "screen": "x11"}).encode())
        (conn,) = park.unsaid
        assert park.first_packet(conn) is False
        (kept,) = park.helpers.values()
        assert kept.uid == os.getuid()  # the kernel's word (SO_PEERCRED), not the helper's
        assert kept.said["language"] == "fr" and kept.said["screen"] == "x11"
        assert park.changed
        park.changed = False
        park.hung_up()
        assert park.parked == [conn] and not park.changed  # still there: nothing seen
        helper.close()  # the user logged out
        park.hung_up()
        assert not park.parked and not park.helpers and park.changed
        assert conn.fileno() == -1  # closed, its hello never read
    finally:
        helper.close()
        selector.close()


def test_only_a_hello_the_machine_service_would_take_counts() -> None:
    assert helper_said(HELLO) == {
        "language": "fr",
        "screen": "",
        "screen_problem": "",
        "desktop": "",
        "monitors": "",
    }
    assert helper_said(json.dumps({"type": "helper", "screen": "x" * 21}).encode()) is None
    assert helper_said(json.dumps({"type": "helper", "language": 7}).encode()) is None
    assert helper_said(QUERY) is None
    assert helper_said(b"[" * 100_000) is None  # too deep for json: no traceback


def test_a_fresh_hello_follows_the_parked_helpers_at_a_bounded_pace(
    listener: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doorbellfresh, "SETTLE", 0.0)
    monkeypatch.setattr(doorbellfresh, "REDIAL_EVERY", 0.3)
    (tmp_path / HELLO_FILE).write_text(
        json.dumps({"type": "hello", "hostname": "pc", "os": "", "user": "", "version": "1"})
    )
    selector = selectors.DefaultSelector()
    park = HelperPark(selector)
    fresh = FreshHello(tmp_path, park, system=True)
    fresh.dialing(fresh.wanted())
    assert fresh.sent is not None and fresh.sent["user"] == ""
    helper = client(listener)
    try:
        park.accept(listener)
        helper.send(HELLO)
        park.first_packet(next(iter(park.unsaid)))
        assert fresh.redial() is None  # a dial was just made: not again so soon
        wanted = wait_for(fresh.redial, 5, "the fresh Hello", step=0.05)
        assert wanted["user"] == pwd.getpwuid(os.getuid()).pw_name
        assert wanted["language"] == "fr" and wanted["hostname"] == "pc"
        fresh.dialing(wanted)
        assert fresh.redial() is None  # nothing changed since
    finally:
        helper.close()
        park.close()
        selector.close()


def test_a_user_gone_while_the_doorbell_was_down_is_cleared_once_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doorbellfresh, "SETTLE", 0.3)
    monkeypatch.setattr(doorbellfresh, "REDIAL_EVERY", 0.0)
    (tmp_path / HELLO_FILE).write_text(
        json.dumps({"type": "hello", "hostname": "pc", "os": "", "user": "alice", "version": "1"})
    )
    selector = selectors.DefaultSelector()
    fresh = FreshHello(tmp_path, HelperPark(selector), system=True)
    try:
        first = fresh.wanted()  # at start: what the last full agent said
        assert first["user"] == "alice"
        fresh.dialing(first)
        assert fresh.redial() is None  # helpers get a moment to come back first
        wanted = wait_for(fresh.redial, 5, "the fresh Hello", step=0.05)
        assert wanted["user"] == "" and wanted["screen_problem"] == "nobody signed in"
    finally:
        selector.close()
