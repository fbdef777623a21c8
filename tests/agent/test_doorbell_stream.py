"""The doorbell against a broker that answers wrong: each bad answer is one log line
and a jittered redial, never a traceback; a 403 makes it wait long; a broker whose
certificate is not under the pinned CA is refused. A real TLS server on 127.0.0.1
and the real ``allowhelp-agent run --idle doorbell`` process."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allowhelp.agent import doorbellhttp as http
from allowhelp.agent.doorbellstream import PROBE_TIMEOUT
from harness import PY, wait_for
from tlskit import PublicCA

TOKEN = "C" * 43
AGENT_ID = "a-streamtest"
LONG_LINE = b"x" * (17 * 1024) + b"\n"
HEAD_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# What the rogue broker answers, one connection each, and what the doorbell must say.
ANSWERS = [
    (HEAD_200 + b"zz\r\n", "a bad chunk size"),
    (HEAD_200 + chunk(b'{"type": "beat"}\n') + chunk(LONG_LINE), "a line longer than"),
    (HEAD_200 + chunk(b"not json at all\n"), "a line that is not JSON"),
    (HEAD_200 + chunk(b'{"type": "beat"}\n') + b"0\r\n\r\n", "the broker ended the doorbell"),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}", "answered HTTP 500"),
    (
        b'HTTP/1.1 403 Forbidden\r\nContent-Length: 35\r\n\r\n{"error": "x", "code": "removed!!"}',
        "refuses this agent (removed!!",
    ),
]


class RogueBroker:
    def __init__(self, folder: Path, answers: list[bytes], names: tuple[str, ...]) -> None:
        self.ca = PublicCA(folder)
        issued = self.ca.issue(names)
        (folder / "chain.pem").write_bytes(issued.chain)
        (folder / "key.pem").write_bytes(issued.key)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(folder / "chain.pem", folder / "key.pem")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(10)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += conn.recv(65536)
                    head, _, body = request.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    conn.sendall(self.answers.pop(0))
            except (OSError, ssl.SSLError):
                continue  # a refused handshake: the doorbell's side of the test says it

    def close(self) -> None:
        self.listener.close()


def doorbell_folder(folder: Path, port: int, ca_pem: str) -> Path:
    folder.mkdir(mode=0o700)
    config = {
        "broker_url": f"https://127.0.0.1:{port}",
        "ca_pem": ca_pem,
        "ca_fingerprint": "0" * 64,
        "tunnel_host": "127.0.0.1",
        "tunnel_port": 9,
        "broker_tunnel_key": "ssh-ed25519 AAAA",
        "agent_id": AGENT_ID,
        "organisation": "test",
    }
    (folder / "agent.json").write_text(json.dumps(config))
    (folder / "doorbell.json").write_text(json.dumps({"agent_id": AGENT_ID, "token": TOKEN}))
    (folder / "hello.json").write_text(json.dumps({"type": "hello", "hostname": "pc"}))
    return folder


def said_in(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text()


@pytest.fixture
def doorbell(tmp_path: Path) -> Iterator[tuple[RogueBroker, Path, subprocess.Popen[bytes]]]:
    rogue = RogueBroker(tmp_path / "ca", [a for a, _ in ANSWERS], ("agents.allowhelp.invalid",))
    ca_pem = rogue.ca.root_file.read_text()
    folder = doorbell_folder(tmp_path / "agent", rogue.port, ca_pem)
    log = tmp_path / "doorbell.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "allowhelp.agent.cli",
                "run",
                "--config",
                str(folder),
                "--prompt",
                "none",
                "--idle",
                "doorbell",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield rogue, log, proc
    finally:
        proc.terminate()
        proc.wait(20)
        rogue.close()


def test_every_bad_answer_is_one_line_and_a_redial(
    doorbell: tuple[RogueBroker, Path, subprocess.Popen[bytes]],
) -> None:
    rogue, log, proc = doorbell
    for _answer, said in ANSWERS:
        wait_for(said_in(log, said), 40, f"the doorbell to say {said!r}")
    text = log.read_text()
    assert "Traceback" not in text and TOKEN not in text
    assert "asking again in" in text  # 403: a long wait, not a redial
    assert text.count("again in") == len(ANSWERS)
    assert proc.poll() is None
    assert "starting the full agent" not in text  # a key, no ring: nothing to wake
    # what it sent, each time: the contract's request, with its key and its last Hello
    assert len(rogue.requests) == len(ANSWERS)
    head, _, body = rogue.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/agent/doorbell HTTP/1.1\r\n")
    assert f"Authorization: Doorbell {AGENT_ID}:{TOKEN}".encode() in head
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"hello": {"type": "hello", "hostname": "pc", "doorbell": "have"}}


def test_a_broker_outside_the_pinned_ca_is_refused(tmp_path: Path) -> None:
    rogue = RogueBroker(tmp_path / "ca", [ANSWERS[0][0]], ("agents.allowhelp.invalid",))
    other = PublicCA(tmp_path / "other", name="Another Root")
    folder = doorbell_folder(tmp_path / "agent", rogue.port, other.root_file.read_text())
    log = tmp_path / "doorbell.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "allowhelp.agent.cli", "run", "--config", str(folder), "--idle", "doorbell"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "certificate not trusted" in log.read_text(), 30, "the refusal")
        assert rogue.requests == []  # not one byte of the key went out
        assert "Traceback" not in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        rogue.close()


def test_sigterm_while_dialing_a_silent_broker_stops_at_once(tmp_path: Path) -> None:
    """A broker that accepts and never answers holds a dial for up to 15 s; a stop
    signal does not wait for that."""
    ca = PublicCA(tmp_path / "ca")
    silent = socket.create_server(("127.0.0.1", 0))
    folder = doorbell_folder(tmp_path / "agent", silent.getsockname()[1], ca.root_file.read_text())
    log = tmp_path / "doorbell.log"
    with silent, log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "allowhelp.agent.cli", "run", "--config", str(folder), "--idle", "doorbell"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(said_in(log, "doorbell running"), 20, "the doorbell to start")
            accepted, _ = silent.accept()  # its TLS hello waits unanswered
            with accepted:
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == 0
                assert time.monotonic() - started < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "doorbell stopped" in text and "Traceback" not in text


def test_a_move_back_probe_gives_a_silent_node_seconds_not_fifteen(tmp_path: Path) -> None:
    """Moving back to a node ahead happens while a stream stands elsewhere and the
    loop waits on it: a node that takes the connection and never speaks TLS holds
    that probe for ``PROBE_TIMEOUT``, not the 15 s a first dial may take."""
    ca = PublicCA(tmp_path / "ca")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(OSError):  # the handshake's timeout
            http.open_tls(url, ca.root_file.read_text(), "direct", PROBE_TIMEOUT)
        took = time.monotonic() - started
    assert PROBE_TIMEOUT <= took < http.CONNECT_TIMEOUT / 2, took
