"""Copy audit records to a syslog collector (RFC 5424 over UDP, or TCP per RFC 6587).

Besides every record, the head (``SEQ:HASH``) goes out as an anchor line every
N records and at stop (``audit/anchor.py``). The copy lives on another machine,
so whoever controls the broker cannot quietly cut the end off (or rewrite) the
audit log: the collector still holds the last ``seq`` and ``hash``. It is a
copy only. The local SQLite record is the one that counts, so a slow or dead
collector must never delay or refuse an action: :meth:`SyslogForwarder.submit`
only puts a line on a bounded queue, and a daemon thread does the network I/O.
When the queue is full, lines are dropped and counted
(:attr:`SyslogForwarder.dropped`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from allowhelp.broker.audit.codes import ANCHOR_MSGID

if TYPE_CHECKING:
    from allowhelp.broker.audit.chain import AuditRecord

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
SEVERITY_CRITICAL = 2
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SD_ID = "allowhelp@32473"
APP_NAME = "allowhelp"
_WARNING_SUFFIXES = (".failed", ".refused", ".denied", ".throttled")
_WARNING_TYPES = frozenset({"audit.anchors.missing"})  # a collector's alert rule should see it
_STOP = object()


def _sd_escape(value: str) -> str:
    """Escape a PARAM-VALUE per RFC 5424 section 6.3.3.

    Control characters are not forbidden by the RFC, but a newline from hostile
    text (an agent's hostname) could forge a line in a collector that writes
    plain files, so they are written as ``\\uXXXX`` (a literal backslash).
    """
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in out)


def _hostname() -> str:
    """RFC 5424 HOSTNAME: printable US-ASCII without spaces, at most 255, else '-'."""
    name = socket.gethostname()
    if name and len(name) <= 255 and all(33 <= ord(c) <= 126 for c in name):
        return name
    return "-"


def _severity(type: str) -> int:
    if type == "audit.chain_broken":
        return SEVERITY_CRITICAL
    if type in _WARNING_TYPES:
        return SEVERITY_WARNING
    return SEVERITY_WARNING if type.endswith(_WARNING_SUFFIXES) else SEVERITY_NOTICE


def format_rfc5424(record: AuditRecord, hostname: str) -> str:
    """One syslog message. MSG is ASCII JSON, so it needs no BOM and no escaping."""
    severity = _severity(record.type)
    pri = FACILITY_AUTHPRIV * 8 + severity
    params = {
        "seq": str(record.seq),
        "type": record.type,
        "actor": record.actor,
        "target": record.target,
        "hash": record.hash,
    }
    sd = " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params.items())
    msg = json.dumps(dict(record.details), sort_keys=True, separators=(",", ":"))
    return f"<{pri}>1 {record.ts} {hostname} {APP_NAME} - {record.code} [{SD_ID} {sd}] {msg}"


def format_anchor(seq: int, digest: str, ts: str, why: str, hostname: str) -> str:
    """A head anchor (``audit/anchor.py``): MSGID AH1905, the head in the SD
    element and in MSG, so ``audit verify --anchors`` can read a collector's file.
    The head an anchor file was made again with (``restarted``) goes as a warning."""
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_WARNING if why == "restarted" else SEVERITY_NOTICE)
    sd = f'seq="{seq}" hash="{digest}" why="{_sd_escape(why)}"'
    msg = json.dumps({"head": f"{seq}:{digest}", "why": why}, sort_keys=True, separators=(",", ":"))
    return f"<{pri}>1 {ts} {hostname} {APP_NAME} - {ANCHOR_MSGID} [{SD_ID} {sd}] {msg}"


class SyslogForwarder:
    """Best-effort, never-blocking copy of audit records to a collector."""

    def __init__(
        self,
        transport: Literal["udp", "tcp"],
        host: str,
        port: int,
        *,
        queue_size: int = 10_000,
        connect_timeout: float = 1.0,
        send_timeout: float = 5.0,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._hostname = _hostname()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._count_lock = threading.Lock()
        self._dropped = 0
        self._sent = 0
        self._closed = False
        self._abort = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    @classmethod
    def from_url(cls, url: str) -> SyslogForwarder:
        """``udp://host:port`` or ``tcp://host:port``; no DNS lookup happens here."""
        hint = "the syslog URL must look like udp://HOST:PORT or tcp://HOST:PORT"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{hint}, got {url!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("udp", "tcp"):
            raise ValueError(f"{hint}, got {url!r} (unknown scheme {parts.scheme!r})")
        if not parts.hostname or port is None or port == 0:
            raise ValueError(f"{hint}, got {url!r} (host and port are both needed)")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"{hint}, got {url!r} (nothing may follow the port)")
        return cls("udp" if scheme == "udp" else "tcp", parts.hostname, port)

    @property
    def dropped(self) -> int:
        """Lines that never reached the collector (queue full, send failed, closed)."""
        return self._dropped

    @property
    def sent(self) -> int:
        return self._sent

    def submit(self, record: AuditRecord) -> None:
        """Queue a record for sending; never blocks, never raises."""
        self._put(lambda: format_rfc5424(record, self._hostname))

    def submit_anchor(self, seq: int, digest: str, ts: str, why: str) -> None:
        """Queue a head anchor line; never blocks, never raises."""
        self._put(lambda: format_anchor(seq, digest, ts, why, self._hostname))

    def _put(self, line: Callable[[], str]) -> None:
        try:
            if self._closed:
                self._drop("forwarder closed")
                return
            self._queue.put_nowait(line())
        except queue.Full:
            self._drop("queue full")
        except Exception:
            log.exception("could not queue an audit line for syslog")
            self._drop("format error")

    def close(self, timeout: float = 2.0) -> None:
        """Flush what is queued for at most ``timeout`` seconds, then stop."""
        self._closed = True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abort.set()
            sock = self._sock
            if sock is not None:  # wake a send stuck on a collector that does not read
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(1.0)

    def _drop(self, why: str) -> None:
        with self._count_lock:
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 1000 == 0:
            log.warning("syslog forwarding dropped %d record(s) so far (%s)", dropped, why)

    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                item = self._queue.get()
                if item is _STOP:
                    break
                assert isinstance(item, str)
                try:
                    delivered = self._deliver(item.encode("utf-8"))
                except Exception:  # e.g. UnicodeError from an odd host name
                    log.exception("syslog forwarding to %s:%d failed", self.host, self.port)
                    delivered = False
                if delivered:
                    with self._count_lock:
                        self._sent += 1
                else:
                    self._drop("send failed")
        finally:
            self._disconnect()
            while True:  # whatever is left after an abort is lost: count it
                try:
                    if self._queue.get_nowait() is not _STOP:
                        self._drop("closed before sending")
                except queue.Empty:
                    break

    def _deliver(self, message: bytes) -> bool:
        if self.transport == "udp":
            return self._send_udp(message)
        # RFC 6587 octet counting: the frame says its own length, so messages may
        # contain any byte and a collector never mis-splits them.
        frame = f"{len(message)} ".encode("ascii") + message
        backoff = 0.5
        while not self._abort.is_set():
            try:
                sock = self._sock or self._connect()
                sock.sendall(frame)
                return True
            except OSError as exc:
                log.warning("syslog collector %s:%d unreachable: %s", self.host, self.port, exc)
                self._disconnect()
                # Retry the same line: dropping happens at the queue, newest first.
                if self._closed:
                    return False
                self._abort.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return False

    def _send_udp(self, message: bytes) -> bool:
        try:
            if self._sock is None:
                family, type_, proto, _, addr = socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_DGRAM
                )[0]
                sock = socket.socket(family, type_, proto)
                sock.connect(addr)  # connected: ICMP errors show up, no per-send lookup
                self._sock = sock
            self._sock.send(message)
            return True
        except OSError as exc:
            log.debug("syslog datagram to %s:%d failed: %s", self.host, self.port, exc)
            self._disconnect()
            return False

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        # A collector that accepts but never reads must not wedge the thread forever.
        sock.settimeout(self._send_timeout)
        self._sock = sock
        log.info("syslog collector %s:%d connected", self.host, self.port)
        return sock

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
