"""The doorbell's limits against a peer that will not stop or will not finish: a
broker (or a local client) that asks for a full agent that keeps failing gets it no
sooner than its backoff allows; a proxy or node that drips its answer a byte at a
time holds a dial for its one deadline, not for as long as it drips. Real sockets
on 127.0.0.1, real child processes, a real TLS server."""

from __future__ import annotations

import itertools
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from allowhelp.agent import doorbellhttp as http
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbellhttp import LineSplitter
from allowhelp.agent.doorbellkey import SavedKey
from allowhelp.agent.doorbellloop import PARKED, Doorbell
from allowhelp.agent.doorbellstream import Stream
from tlskit import PublicCA

AGENT_ID = "a-limits"
RING = b'{"type": "ring", "reason": "consent.request"}\n'
DRIP_EVERY = 0.3  # seconds between two bytes of a dripped answer
DRIP = b"X-Pad: " + b"a" * 33 + b"\r\n\r\n"  # 44 bytes: 13 s dripped
TIMEOUT = 1.0


def config(url: str = "https://127.0.0.1:1", ca_pem: str = "") -> AgentConfig:
    return AgentConfig(url, ca_pem, "", "", 0, "", AGENT_ID, "org", "", proxy="direct")


def bell_with(
    tmp_path: Path, request: pytest.FixtureRequest, command: list[str], **kw: socket.socket
) -> Doorbell:
    bell = Doorbell(tmp_path, config(), command, dict(kw))
    request.addfinalizer(bell.close)
    return bell


def reap(bell: Doorbell, started: list[subprocess.Popen[bytes]]) -> None:
    """A step of the loop's child side; a new full agent is noted in ``started``."""
    bell._reap()
    bell._ring_missed()
    note(bell, started)


def note(bell: Doorbell, started: list[subprocess.Popen[bytes]]) -> None:
    if bell.child is not None and (not started or bell.child is not started[-1]):
        started.append(bell.child)


# a failing full agent and a broker that rings on


def test_rings_do_not_start_a_failing_full_agent_sooner_than_its_backoff(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A full agent that dies at once (``false``) and a broker ringing every 50 ms:
    starts at 0, 1 and 3 s (the backoff's 1, 2 s), not one per ring; each ring kept
    meanwhile starts the next one when the backoff ends."""
    bell = bell_with(tmp_path, request, ["false"])
    ours, theirs = socket.socketpair()
    request.addfinalizer(theirs.close)
    now = time.monotonic()
    bell.stream = Stream(cast(ssl.SSLSocket, ours), None, LineSplitter(), now, now)
    started: list[subprocess.Popen[bytes]] = []
    when: list[float] = []
    until = time.monotonic() + 4.5
    while time.monotonic() < until:
        before = len(started)
        reap(bell, started)
        bell._feed(RING)
        note(bell, started)
        when += [time.monotonic()] * (len(started) - before)
        time.sleep(0.05)
    for child in started:
        child.wait(10)
    assert len(started) == 3, [round(t - when[0], 2) for t in when]
    gaps = [b - a for a, b in itertools.pairwise(when)]
    assert 1.0 <= gaps[0] < 1.5 and 2.0 <= gaps[1] < 2.5, gaps
    assert bell.failures >= 2


def test_a_local_client_waits_for_the_backoff_too(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A CLI request on the machine socket while a failed full agent's backoff runs:
    parked, and the full agent (with it) started when the backoff ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    request.addfinalizer(listener.close)
    listener.bind(str(tmp_path / "machine.sock"))
    listener.listen()
    listener.setblocking(False)
    bell = bell_with(tmp_path, request, ["false"], **{PARKED: listener})
    bell._start_child("a first try")
    assert bell.child is not None
    bell.child.wait(10)
    bell._reap()  # failed: the next start no sooner than 1 s from now
    assert bell.child is None and bell.not_before > time.monotonic() + 0.5
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    request.addfinalizer(client.close)
    client.connect(str(tmp_path / "machine.sock"))
    client.sendall(b'{"type": "status"}\n')
    bell.park.accept(listener)
    (conn,) = bell.park.unsaid
    bell._ready(conn)  # not a helper's hello: the full agent is wanted
    assert bell.child is None and "a local client" in bell.rang
    started: list[subprocess.Popen[bytes]] = []
    while not started and time.monotonic() < bell.not_before + 2:
        reap(bell, started)
        time.sleep(0.02)
    assert len(started) == 1 and bell.rang == ""
    assert started[0].wait(10) == 1


# a peer that drips its answer


class Dripper:
    """Takes one connection (TLS when ``context``), reads a request's head and body,
    sends ``at_once``, then ``drip`` a byte every ``DRIP_EVERY`` s."""

    def __init__(self, at_once: bytes, context: ssl.SSLContext | None = None) -> None:
        self.at_once, self.context = at_once, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with raw, self._wrap(raw) as conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = head.lower().partition(b"content-length:")[2].split(b"\r\n")[0]
                while len(body) < int(length or 0):
                    body += conn.recv(65536)
                conn.sendall(self.at_once)
                self._rest(conn)
        except (OSError, ssl.SSLError):
            return  # the doorbell gave up and closed

    def _rest(self, conn: socket.socket) -> None:
        for byte in DRIP:
            if self.stop.wait(DRIP_EVERY):
                return
            conn.sendall(bytes([byte]))

    def _wrap(self, raw: socket.socket) -> socket.socket:
        return raw if self.context is None else self.context.wrap_socket(raw, server_side=True)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(20)


@pytest.fixture
def ca(tmp_path: Path) -> tuple[PublicCA, ssl.SSLContext]:
    public = PublicCA(tmp_path / "ca")
    issued = public.issue((http.AGENT_TLS_NAME,))
    (tmp_path / "chain.pem").write_bytes(issued.chain)
    (tmp_path / "key.pem").write_bytes(issued.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    return public, context


@pytest.fixture
def dripping() -> Iterator[list[Dripper]]:
    servers: list[Dripper] = []
    yield servers
    for server in servers:
        server.close()


def test_a_proxy_dripping_its_answer_is_given_one_timeout_in_all(
    tmp_path: Path, dripping: list[Dripper]
) -> None:
    proxy = Dripper(b"HTTP/1.1 200 Connection established\r\n")
    dripping.append(proxy)
    proxy_url = proxy.url.replace("https://", "http://")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        http.open_tls("https://broker.test:8443", "", proxy_url, TIMEOUT)
    took = time.monotonic() - started
    assert TIMEOUT * 0.9 <= took < 3, took
    assert http.said(raised.value) == "no answer in time"


def dripping_bell(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ca: tuple[PublicCA, ssl.SSLContext],
    dripping: list[Dripper],
    answer: bytes,
) -> tuple[Dripper, Doorbell]:
    """A TLS node that drips ``answer``, and a doorbell enrolled with it."""
    public, context = ca
    node = Dripper(answer, context)
    dripping.append(node)
    bell = Doorbell(tmp_path, config(node.url, public.root_file.read_text()), ["true"], {})
    request.addfinalizer(bell.close)
    return node, bell


def test_a_node_dripping_its_answer_head_is_given_one_timeout_in_all(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ca: tuple[PublicCA, ssl.SSLContext],
    dripping: list[Dripper],
) -> None:
    node, bell = dripping_bell(tmp_path, request, ca, dripping, b"HTTP/1.1 200 OK\r\n")
    started = time.monotonic()
    tried = bell._ring_in(node.url, SavedKey(AGENT_ID, "T" * 43), {"type": "hello"}, TIMEOUT)
    took = time.monotonic() - started
    assert tried == "no answer in time"
    assert TIMEOUT * 0.9 <= took < 3, took


def test_a_node_dripping_an_error_body_is_given_one_timeout_in_all(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ca: tuple[PublicCA, ssl.SSLContext],
    dripping: list[Dripper],
) -> None:
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: 4000\r\n\r\n"
    node, bell = dripping_bell(tmp_path, request, ca, dripping, answer)
    started = time.monotonic()
    assert not bell._dial(SavedKey(AGENT_ID, "T" * 43), [node.url], TIMEOUT)
    took = time.monotonic() - started
    assert took < 3, took
    assert bell.stream is None and bell.child is None


# a peer that floods the stream


class Flooder(Dripper):
    """A node that stands the stream (200, chunked, a beat), then sends one-byte
    chunks (a blank line each: nothing to refuse) as fast as it can, each its own TLS
    record, for ``FLOOD_FOR`` seconds; then it holds the stream, silent."""

    sent = 0

    def _rest(self, conn: socket.socket) -> None:
        until = time.monotonic() + FLOOD_FOR
        while time.monotonic() < until and not self.stop.is_set():
            conn.sendall(b"1\r\n\n\r\n")
            self.sent += 1
        self.stop.wait(30)


FLOOD_FOR = 4.0
CHUNKED_BEAT = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{"type": "beat"}\n\r\n'


def test_a_stream_of_tiny_chunks_is_dropped_not_decoded_on_and_on(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ca: tuple[PublicCA, ssl.SSLContext],
    dripping: list[Dripper],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node floods the standing stream with one-byte chunks: the doorbell drops
    it within its read budget (256 reads in 10 s) instead of reading on for as long
    as the flood lasts, having spent a fraction of a second of CPU, and dials again
    only after its backoff, which the flood does not start over."""
    public, context = ca
    node = Flooder(CHUNKED_BEAT, context)
    dripping.append(node)
    bell = Doorbell(tmp_path, config(node.url, public.root_file.read_text()), ["true"], {})
    request.addfinalizer(bell.close)
    bell.attempts = 3
    assert bell._dial(SavedKey(AGENT_ID, "T" * 43), [node.url], TIMEOUT)
    stream = bell.stream
    assert stream is not None
    cpu, started = time.thread_time(), time.monotonic()
    while bell.stream is stream and time.monotonic() - started < FLOOD_FOR + 2:
        for selected, _mask in bell._selector.select(0.1):
            bell._ready(selected.data)
    spent, took = time.thread_time() - cpu, time.monotonic() - started
    assert bell.stream is None, f"still reading after {took:.1f} s ({spent:.2f} s of CPU)"
    assert node.sent > 256  # it was a flood, cut short
    assert bell.attempts == 4 and bell.next_dial > time.monotonic()  # backed off, not reset
    assert "the broker's stream is too busy (over 256 reads in 10 s); again in" in caplog.text


def test_tiny_chunks_in_one_feed_decode_whole() -> None:
    """1 MiB of one-byte chunks in one feed, walked by position (cutting the buffer
    once per chunk made it some 10 s, quadratic: measured once, 11.2 s against 0.37 s;
    speed belongs in bench/, so only the result is checked here)."""
    tiny = b"1\r\n\n\r\n" * (1024 * 1024 // 6)
    decoder = http.ChunkDecoder()
    assert decoder.feed(tiny) == b"\n" * (len(tiny) // 6)
    assert decoder.feed(b"2\r\nab") == b"" and decoder.feed(b"\r\n0\r\n\r\n") == b"ab"
    assert decoder.done
