"""Syslog forwarding against real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import AuditLog, verify
from allowhelp.broker.audit.syslog import SyslogForwarder
from syslogkit import parse_5424

HOSTILE = 'user:"bob"\\x]y@pc12\nfake <85>1 line'


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(10)
    yield sock
    sock.close()


def closed_port(kind: socket.SocketKind) -> int:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def read_frames(conn: socket.socket, count: int) -> list[str]:
    """RFC 6587 octet counting: 'LEN SP MSG', repeated."""
    buf, frames = b"", list[str]()
    while len(frames) < count:
        while b" " not in buf or len(buf) < buf.index(b" ") + 1 + int(buf.split(b" ", 1)[0]):
            chunk = conn.recv(65536)
            assert chunk, f"connection closed after {len(frames)} frames"
            buf += chunk
        length, rest = buf.split(b" ", 1)
        assert length.isdigit() and not length.startswith(b"0")
        frames.append(rest[: int(length)].decode())
        buf = rest[int(length) :]
    return frames


@pytest.mark.parametrize(
    "url",
    ["syslog://h:514", "udp://h", "tcp://:514", "udp://h:0", "udp://h:99999", "tcp://h:514/x", "h"],
)
def test_bad_urls_are_refused_with_a_hint(url: str) -> None:
    with pytest.raises(ValueError, match=r"must look like udp://HOST:PORT or tcp://HOST:PORT"):
        SyslogForwarder.from_url(url)


def test_good_urls(udp_listener: socket.socket) -> None:
    for url, expected in [
        ("udp://127.0.0.1:514", ("udp", "127.0.0.1", 514)),
        ("TCP://logs.example.org:6514", ("tcp", "logs.example.org", 6514)),
        ("tcp://[::1]:601", ("tcp", "::1", 601)),
    ]:
        fwd = SyslogForwarder.from_url(url)
        assert (fwd.transport, fwd.host, fwd.port) == expected
        fwd.close(timeout=0.5)


def test_udp_lines_are_rfc5424_with_escaped_values(
    tmp_path: Path, udp_listener: socket.socket
) -> None:
    fwd = SyslogForwarder.from_url(f"udp://127.0.0.1:{udp_listener.getsockname()[1]}")
    log = AuditLog.open(tmp_path / "audit.sqlite3", forwarder=fwd)
    granted = log.append(
        "consent.granted", actor=HOSTILE, target="s]1", details={"kind": "shell", "why": 'é]"'}
    )
    denied = log.append("consent.denied", actor="user:bob@pc12", target="s2")
    lines = [udp_listener.recv(65536).decode() for _ in range(2)]
    log.close()
    fwd.close()
    assert "\n" not in lines[0]  # a hostile newline cannot forge a second line
    first, second = parse_5424(lines[0]), parse_5424(lines[1])
    assert first["pri"] == str(10 * 8 + 5)  # authpriv.notice
    assert second["pri"] == str(10 * 8 + 4)  # authpriv.warning for a denial
    assert (first["ts"], first["app"], first["procid"], first["msgid"]) == (
        granted.ts,
        "allowhelp",
        "-",
        granted.code,
    )
    assert first["sdid"] == "allowhelp@32473"
    assert first["params"] == {
        "seq": "1",
        "type": "consent.granted",
        "actor": HOSTILE.replace("\n", "\\u000a"),
        "target": "s]1",
        "hash": granted.hash,
    }
    assert json.loads(str(first["msg"])) == granted.details
    assert second["params"]["hash"] == denied.hash  # type: ignore[index]
    assert fwd.sent == 2 and fwd.dropped == 0


def test_tcp_uses_octet_counting(tmp_path: Path, tcp_listener: socket.socket) -> None:
    fwd = SyslogForwarder.from_url(f"tcp://127.0.0.1:{tcp_listener.getsockname()[1]}")
    log = AuditLog.open(tmp_path / "audit.sqlite3", forwarder=fwd)
    records = [
        log.append("auth.login.failed", actor="technician:alice", details={"n": "a\nb " * i})
        for i in range(3)
    ]
    conn, _ = tcp_listener.accept()
    with conn:
        conn.settimeout(10)
        frames = read_frames(conn, 3)
    log.close()
    fwd.close()
    parsed = [parse_5424(f) for f in frames]
    assert [p["params"]["seq"] for p in parsed] == ["1", "2", "3"]  # type: ignore[index]
    assert [p["pri"] for p in parsed] == ["84"] * 3
    assert [json.loads(str(p["msg"])) for p in parsed] == [r.details for r in records]


def test_tcp_reconnects_after_the_collector_drops_it(
    tmp_path: Path, tcp_listener: socket.socket
) -> None:
    fwd = SyslogForwarder.from_url(f"tcp://127.0.0.1:{tcp_listener.getsockname()[1]}")
    log = AuditLog.open(tmp_path / "audit.sqlite3", forwarder=fwd)
    log.append("broker.started", actor="system")
    conn, _ = tcp_listener.accept()
    with conn:
        conn.settimeout(10)
        assert len(read_frames(conn, 1)) == 1
    # Collector restarted. The first write after a peer close may vanish (TCP
    # cannot tell), so keep writing until a new connection shows up.
    tcp_listener.settimeout(0.2)
    deadline, conn2 = time.monotonic() + 20, None
    while conn2 is None and time.monotonic() < deadline:
        log.append("agent.connected", actor="agent:a-1")
        try:
            conn2, _ = tcp_listener.accept()
        except TimeoutError:
            continue
    assert conn2 is not None, "the forwarder never reconnected"
    with conn2:
        conn2.settimeout(10)
        frame = parse_5424(read_frames(conn2, 1)[0])
    assert int(frame["params"]["seq"]) >= 2  # type: ignore[index]
    log.close()
    fwd.close(timeout=0.5)


def _timed_appends(path: Path, fwd: SyslogForwarder | None, n: int = 500) -> float:
    """n appends in a thread, so a forwarder that blocks fails the test instead of hanging it."""
    log = AuditLog.open(path, forwarder=fwd)
    details = {"blob": "x" * 32_000}
    took: list[float] = []

    def run() -> None:
        start = time.monotonic()
        for i in range(n):
            log.append("session.ended", actor="technician:alice", target=f"s{i}", details=details)
        took.append(time.monotonic() - start)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "append blocked on the syslog forwarder"
    log.close()
    return took[0]


@pytest.mark.parametrize("collector", ["udp-closed", "tcp-closed", "tcp-never-reads"])
def test_a_dead_collector_slows_nothing_and_loses_nothing_locally(
    tmp_path: Path, tcp_listener: socket.socket, collector: str
) -> None:
    baseline = _timed_appends(tmp_path / "baseline.sqlite3", None)
    if collector == "udp-closed":
        url = f"udp://127.0.0.1:{closed_port(socket.SOCK_DGRAM)}"
    elif collector == "tcp-closed":
        url = f"tcp://127.0.0.1:{closed_port(socket.SOCK_STREAM)}"
    else:  # accepts (the kernel completes the handshake) but never reads
        url = f"tcp://127.0.0.1:{tcp_listener.getsockname()[1]}"
    fwd = SyslogForwarder(
        "udp" if url.startswith("udp") else "tcp",
        "127.0.0.1",
        int(url.rsplit(":", 1)[1]),
        queue_size=50,
    )
    path = tmp_path / "audit.sqlite3"
    with_fwd = _timed_appends(path, fwd)
    started = time.monotonic()
    fwd.close(timeout=0.5)
    assert time.monotonic() - started < 5, "close() hung on the dead collector"
    # Generous: fsync dominates both runs; a blocking submit would take forever.
    assert with_fwd < 3 * baseline + 2.0, (with_fwd, baseline)
    result = verify(path)
    assert result.ok and result.count == 500
    if collector != "udp-closed":  # UDP to a closed port may still "send"
        assert fwd.dropped > 0
    assert fwd.sent + fwd.dropped <= 500
