"""The doorbell's pure parts: the answer's head, chunked decoding, ndjson lines,
its files, its child's command line. Every bad input is a ``StreamError`` (one
line), never another exception."""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import cast

import pytest

from allowhelp.agent import doorbellhttp as http
from allowhelp.agent import proxyurl, upgrade
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbell import woken_command
from allowhelp.agent.doorbellhttp import ChunkDecoder, LineSplitter, StreamError, backoff
from allowhelp.agent.doorbellkey import DOORBELL_FILE, HELLO_FILE, hello_body, read_key, save_key
from allowhelp.agent.doorbellloop import TICK, UPGRADED_FILE, Doorbell
from allowhelp.agent.doorbellstream import READ_IDLE, Stream
from allowhelp.agent.localpath import LISTEN_FDS_ENV, inherited_listener, parse_listen_fds
from allowhelp.certs.pki import AGENT_TLS_NAME

TOKEN = "A" * 42 + "_"


def test_copied_constants_match_their_sources() -> None:
    assert http.AGENT_TLS_NAME == AGENT_TLS_NAME
    assert UPGRADED_FILE == upgrade.UPGRADED_FILE


def test_a_head_is_parsed_once_complete() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n"
    )
    assert http.head_length(data[:20]) is None
    length = http.head_length(data)
    assert length is not None and data[length:] == b"5\r\n"
    head = http.parse_head(data[:length])
    assert (head.status, head.reason, head.chunked) == (200, "OK", True)
    assert head.headers["content-type"] == "application/x-ndjson"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * http.MAX_HEAD, "longer than"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
    ],
)
def test_a_bad_head_is_refused_in_one_line(data: bytes, said: str) -> None:
    with pytest.raises(StreamError, match=said):
        length = http.head_length(data)
        http.parse_head(data if length is None else data[:length])


def test_chunks_decode_whatever_way_they_are_cut() -> None:
    body = b'{"type": "beat"}\n{"type": "ring", "reason": "wake"}\n'
    wire = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:30], body[30:])
    )
    wire += b"0\r\n\r\n"
    for _ in range(20):
        decoder, lines, out = ChunkDecoder(), LineSplitter(), []
        cuts = sorted(random.sample(range(1, len(wire)), 5))
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            out += lines.feed(decoder.feed(wire[start:end]))
        assert [json.loads(line)["type"] for line in out] == ["beat", "ring"]
        assert decoder.done


@pytest.mark.parametrize(
    ("wire", "said"),
    [
        (b"zz\r\n", "bad chunk size"),
        (b"-5\r\n", "bad chunk size"),
        (b"\r\n", "bad chunk size"),
        (b"1" * 70, "longer than 64 bytes"),
        (b"%x\r\n" % (http.MAX_CHUNK + 1), "at most"),
        (b"3\r\nabcXY", "does not end with CRLF"),
    ],
)
def test_bad_chunks_are_refused_in_one_line(wire: bytes, said: str) -> None:
    with pytest.raises(StreamError, match=said):
        ChunkDecoder().feed(wire)


def test_a_chunk_extension_is_ignored() -> None:
    assert ChunkDecoder().feed(b"3;name=value\r\nabc\r\n") == b"abc"


def test_a_line_over_the_limit_is_refused_complete_or_not() -> None:
    with pytest.raises(StreamError, match="longer than 10 bytes"):
        LineSplitter(limit=10).feed(b"x" * 11 + b"\n")
    with pytest.raises(StreamError, match="longer than 10 bytes"):
        LineSplitter(limit=10).feed(b"x" * 11)  # no newline yet: refused before it grows
    assert LineSplitter(limit=10).feed(b"\n\r\nabc\r\n") == [b"abc"]


@pytest.mark.parametrize(
    "line", [b"not json", b"[1, 2]", b'{"type": 3}', b'{"reason": "x"}', b"[" * 100000]
)
def test_a_line_that_is_not_an_event_is_refused(line: bytes) -> None:
    with pytest.raises(StreamError):
        http.parse_event(line)


def test_the_request_carries_the_key_and_the_body() -> None:
    request = http.doorbell_request("127.0.0.1:8443", "agent-1", TOKEN, b'{"hello": {}}')
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/agent/doorbell HTTP/1.1\r\n")
    assert f"Authorization: Doorbell agent-1:{TOKEN}".encode() in head
    assert b"Content-Length: 13" in head and body == b'{"hello": {}}'


def test_the_proxy_request_and_its_password() -> None:
    """The doorbell's CONNECT is the tunnel's own (``proxyurl.py``): one code path."""
    proxy = proxyurl.parse_proxy("http://me:p%40ss@proxy.test:3128")
    assert "p@ss" not in str(proxy) and "p@ss" not in repr(proxy)
    request = proxyurl.connect_request("broker.test", 443, proxy)
    assert request.startswith(b"CONNECT broker.test:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic bWU6cEBzcw==" in request
    assert proxyurl.proxy_for("broker.test", "direct") is None
    # a bad proxy URL is the doorbell's StreamError (one log line, dial again),
    # said before any connection is tried
    with pytest.raises(StreamError, match="http://"):
        http.open_tls("https://broker.test:8443", "", "socks5://me:p%40ss@proxy.test:1080")


def test_error_codes_are_read_from_json_or_text() -> None:
    assert http.error_code(b'{"error": "no", "code": "doorbell_refused"}') == "doorbell_refused"
    assert http.error_code(b"Not Found") == "Not Found"


def test_the_key_file_round_trip_and_damage(tmp_path: Path) -> None:
    assert read_key(tmp_path) is None
    save_key(tmp_path, "agent-1", TOKEN)
    assert stat.S_IMODE((tmp_path / DOORBELL_FILE).stat().st_mode) == 0o600
    key = read_key(tmp_path)
    assert key is not None and (key.agent_id, key.token) == ("agent-1", TOKEN)
    assert TOKEN not in repr(key)
    with pytest.raises(ValueError, match="43 urlsafe"):
        save_key(tmp_path, "agent-1", "short")
    for damaged in ("{", "[]", '{"agent_id": "a", "token": "short"}', '{"token": "' + TOKEN + '"}'):
        (tmp_path / DOORBELL_FILE).write_text(damaged)
        assert read_key(tmp_path) is None


def test_the_body_says_have_and_survives_a_missing_or_damaged_hello(tmp_path: Path) -> None:
    for hello in (
        None,
        "{damaged",
        json.dumps({"type": "hello", "hostname": "pc", "doorbell": "need"}),
    ):
        if hello is not None:
            (tmp_path / HELLO_FILE).write_text(hello)
        body = json.loads(hello_body(tmp_path))
        assert body["hello"]["doorbell"] == "have"
        assert body["hello"]["hostname"]
        assert len(hello_body(tmp_path)) <= 16 * 1024


def test_the_woken_command_is_this_one_with_idle_woken() -> None:
    argv = ["run", "--config", "/c", "--idle", "doorbell", "--linger", "2"]
    assert woken_command(argv, ["python", "-m", "allowhelp.agent.cli", *argv], "/py") == [
        "/py", "-m", "allowhelp.agent.cli", *argv, "--idle", "woken",
    ]  # fmt: skip
    # the .deb's launcher (packaging/build-debs: python3 -I -m ...): -I kept
    launched = ["/opt/env/bin/python3", "-I", "-m", "allowhelp.agent.cli", *argv]
    assert woken_command(argv, launched, "/opt/env/bin/python3")[:4] == launched[:4]
    # the console script, a -c program with its own argument
    assert woken_command(argv, ["python", "/bin/allowhelp-agent", *argv], "/py")[1] == (
        "/bin/allowhelp-agent"
    )
    assert woken_command(argv, ["python", "-c", "prog", "out", *argv], "/py")[1:3] == ["-c", "prog"]
    # main(argv) called with other arguments than the process's: the module
    assert woken_command(argv, ["python", "-m", "pytest"], "/py")[1:3] == [
        "-m",
        "allowhelp.agent.cli",
    ]


def test_backoff_grows_to_the_cap_jittered() -> None:
    assert backoff(0, lambda low, high: high) == 1.0
    assert backoff(3, lambda low, high: low) == 4.0
    assert backoff(20, lambda low, high: high) == 30.0
    assert all(0.5 <= backoff(0) <= 1.0 for _ in range(50))


def test_listen_fds_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_listen_fds("local=5,machine=6") == {"local": 5, "machine": 6}
    assert parse_listen_fds("") == {}
    for bad in ("local", "local=x", "=5", "local=1"):
        with pytest.raises(ValueError, match=LISTEN_FDS_ENV):
            parse_listen_fds(bad)
    monkeypatch.delenv(LISTEN_FDS_ENV, raising=False)
    assert inherited_listener("local") is None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wrong_kind = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, wrong_kind:
        monkeypatch.setenv(LISTEN_FDS_ENV, f"local={listener.fileno()},other={wrong_kind.fileno()}")
        listener.set_inheritable(True)  # as pass_fds hands it down
        got = inherited_listener("local")
        assert got is not None and got.fileno() == listener.fileno()
        assert not got.get_inheritable()  # a program the agent starts does not get it
        assert os.environ[LISTEN_FDS_ENV] == f"other={wrong_kind.fileno()}"  # nor its name
        got.detach()  # the same descriptor: closed once, by ``listener``
        with pytest.raises(Exception, match="not the agent's socket"):
            inherited_listener("other")
        assert LISTEN_FDS_ENV not in os.environ
        read, write = os.pipe()
        try:
            monkeypatch.setenv(LISTEN_FDS_ENV, f"local={read}")
            with pytest.raises(Exception, match="not a socket"):
                inherited_listener("local")
        finally:
            os.close(read)
            os.close(write)


def test_the_loop_never_spins_while_it_waits_for_a_key(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No key, no stream (the full agent is fetching one, or an older broker never
    sends one): the doorbell looks again after a tick, not at once."""
    config = AgentConfig("https://127.0.0.1:1", "", "", "", 0, "", "a-1", "org", "wss://x")
    bell = Doorbell(tmp_path, config, ["true"], {})
    request.addfinalizer(bell.close)
    assert bell._timeout(keyed=False) == TICK
    assert bell._timeout(keyed=True) == 0.0  # a key and no stream: dial now
    bell.next_dial = time.monotonic() + 0.5
    assert 0.4 < bell._timeout(keyed=True) <= 0.5
    bell.not_before = time.monotonic() + 0.2  # a failed full agent: its next start
    assert 0.1 < bell._timeout(keyed=False) <= 0.2


def test_a_quiet_stream_is_dropped_and_dialed_again(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = AgentConfig("https://127.0.0.1:1", "", "", "", 0, "", "a-1", "org", "wss://x")
    bell = Doorbell(tmp_path, config, ["true"], {})
    request.addfinalizer(bell.close)
    ours, theirs = socket.socketpair()
    request.addfinalizer(theirs.close)
    now = time.monotonic()
    bell.stream = Stream(cast(ssl.SSLSocket, ours), None, LineSplitter(), now - 100, now - 59)
    bell._check_quiet()
    assert bell.stream is not None  # 59 s: a beat may still come
    bell.stream.last_read = now - READ_IDLE - 1
    bell._check_quiet()
    assert bell.stream is None and ours.fileno() == -1  # closed
    # dialed again after a backoff (a stream that stood 100 s starts it over: ~1 s)
    assert bell.attempts == 1 and 0.5 <= bell.next_dial - now <= 1.1


def test_a_ring_while_a_full_agent_ends_starts_the_next_one(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The broker rings only a PC without a tunnel: a ring that comes while a full
    agent runs came while it was ending (its linger ran out) and must not be lost."""
    config = AgentConfig("https://127.0.0.1:1", "", "", "", 0, "", "a-1", "org", "wss://x")
    bell = Doorbell(tmp_path, config, ["sleep", "0.2"], {})
    request.addfinalizer(bell.close)
    ours, theirs = socket.socketpair()
    request.addfinalizer(theirs.close)
    now = time.monotonic()
    bell.stream = Stream(cast(ssl.SSLSocket, ours), None, LineSplitter(), now, now)
    ring = b'{"type": "ring", "reason": "consent.request"}\n'
    bell._feed(ring)
    first = bell.child
    assert first is not None and bell.rang == ""
    bell._feed(ring)  # while it runs: remembered, not started twice
    assert bell.child is first and bell.rang == "the broker rang: consent.request"
    bell._ring_missed()
    assert bell.child is first  # it still runs: nothing yet
    first.wait(10)
    bell._reap()
    bell._ring_missed()
    second = bell.child
    assert second is not None and second is not first and bell.rang == ""
    second.wait(10)
    bell._reap()
    bell._ring_missed()
    assert bell.child is None  # one ring, one more start
