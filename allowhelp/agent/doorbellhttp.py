"""The doorbell's HTTP/1.1 client: one POST, then a stream of ndjson lines.

Standard library only (``socket``, ``ssl``, ``json``): the idle agent
(``doorbell.py``) must not load asyncio, asyncssh or cryptography. TLS trusts
the CA pinned at enrolment alone and asks for ``AGENT_TLS_NAME``, as enrolment
does; a web proxy is passed with HTTP ``CONNECT`` as ``proxy.py`` does for the
tunnel (its password never in a message).

The parsers are plain objects fed bytes (no I/O), so every bad input is tested
apart: an answer head over ``MAX_HEAD``, a chunk size that is not hex or too
big, a line over ``MAX_LINE``, a line that is not a JSON object. Each raises
``StreamError`` with one line saying what was wrong; the doorbell then drops
the connection and dials again.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from allowhelp.agent.proxyurl import connect_request, proxy_for

DOORBELL_PATH = "/api/v1/agent/doorbell"
# The name agents ask for (SNI): certs.pki.AGENT_TLS_NAME (a test keeps them equal;
# importing certs.pki would load cryptography).
AGENT_TLS_NAME = "agents.allowhelp.invalid"
# One deadline for a dial: TCP connect, the proxy's answer, TLS, the answer's head and
# an error's body together (a peer that sends a byte now and then holds it no longer).
CONNECT_TIMEOUT = 15.0
MAX_HEAD = 16 * 1024
MAX_LINE = 16 * 1024  # a ring or a beat is some 40 bytes
MAX_CHUNK = 1024 * 1024
MAX_ERROR_BODY = 4096
BACKOFF_CAP = 30.0


class StreamError(Exception):
    """The broker's answer or stream is not what the contract says; one line why."""


@dataclass(frozen=True)
class Head:
    status: int
    reason: str
    headers: dict[str, str]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


def head_length(buffer: bytes) -> int | None:
    """Bytes of an answer's head (through the blank line) once it is all there;
    ``StreamError`` when it is not there within ``MAX_HEAD`` bytes."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0 and end + 4 <= MAX_HEAD:
        return end + 4
    if end >= 0 or len(buffer) >= MAX_HEAD:
        raise StreamError(f"the answer's head is longer than {MAX_HEAD} bytes")
    return None


def parse_head(head: bytes) -> Head:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    # 0-9 only, as protocol.text's ascii_digits (not imported: it would load unicodedata
    # into the idle doorbell, whose memory is counted: issue #19)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or not (parts[1].isascii() and parts[1].isdigit())
    ):
        raise StreamError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise StreamError(f"a malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), parts[2].strip()[:80] if len(parts) > 2 else "", headers)


@dataclass
class ChunkDecoder:
    """``Transfer-Encoding: chunked``, fed as it arrives; ``done`` after the last chunk."""

    buffer: bytes = b""
    left: int = -1  # bytes of the current chunk still to come; -1: a size line is next
    done: bool = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes ``data`` completes. Linear in what it is fed: the buffer is
        walked by position and cut once (not once per chunk), so a read holding
        thousands of tiny chunks costs no more than one holding a few large ones."""
        buffer = self.buffer + data if self.buffer else data
        at = 0
        out = bytearray()
        while not self.done:
            if self.left < 0:
                end = buffer.find(b"\r\n", at, at + 66)  # a size line: 64 bytes at most
                if end < 0:
                    if len(buffer) - at > 64:
                        raise StreamError("a chunk size line is longer than 64 bytes")
                    break
                self.left = chunk_size(buffer[at:end])
                at = end + 2
                if self.left == 0:
                    self.done = True  # trailers, if any, are not read
                    break
            if len(buffer) - at < self.left + 2:
                break
            if buffer[at + self.left : at + self.left + 2] != b"\r\n":
                raise StreamError("a chunk does not end with CRLF")
            out += buffer[at : at + self.left]
            at += self.left + 2
            self.left = -1
        self.buffer = buffer[at:]
        return bytes(out)


def chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    size = int(text, 16) if text and all(c in b"0123456789abcdefABCDEF" for c in text) else -1
    if size < 0:
        raise StreamError(f"a bad chunk size: {line[:20]!r}")
    if size > MAX_CHUNK:
        raise StreamError(f"a chunk of {size} bytes (at most {MAX_CHUNK})")
    return size


@dataclass
class LineSplitter:
    """ndjson: complete lines out, the rest kept; a line over ``limit`` is refused."""

    limit: int = MAX_LINE
    buffer: bytes = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if any(len(line) > self.limit for line in lines) or len(self.buffer) > self.limit:
            raise StreamError(f"a line longer than {self.limit} bytes")
        return [line.rstrip(b"\r") for line in lines if line.strip()]


def parse_event(line: bytes) -> dict[str, object]:
    """One ndjson line: a JSON object with a string ``type``."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        raise StreamError(f"a line that is not JSON: {line[:60]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise StreamError(f"a line that is not an event: {line[:60]!r}")
    return event


# the connection


def doorbell_request(host: str, agent_id: str, token: str, body: bytes) -> bytes:
    head = [
        f"POST {DOORBELL_PATH} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: allowhelp-agent",
        f"Authorization: Doorbell {agent_id}:{token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Accept: application/x-ndjson",
        "",
        "",
    ]
    return "\r\n".join(head).encode("latin-1") + body


def time_left(sock: socket.socket, deadline: float) -> None:
    """The time to ``deadline`` (``time.monotonic``) as ``sock``'s timeout for its next
    call; ``TimeoutError`` (said: "no answer in time") once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)


def read_head(sock: socket.socket, deadline: float) -> tuple[Head, bytes]:
    """The answer's head and whatever of the body came with it (blocking, all of it
    by ``deadline``: a byte now and then does not hold it longer)."""
    data = b""
    while True:
        time_left(sock, deadline)
        chunk = sock.recv(MAX_HEAD)
        if not chunk:
            raise StreamError("the connection closed before an answer")
        data += chunk
        length = head_length(data)
        if length is not None:
            return parse_head(data[:length]), data[length:]


def open_tls(
    url: str, ca_pem: str, proxy_setting: str, timeout: float = CONNECT_TIMEOUT
) -> ssl.SSLSocket:
    """A TLS connection to the broker's HTTPS port, checked against the pinned CA;
    ``timeout`` bounds it all (connect, the proxy's answer and TLS together); the
    socket's timeout is then what is left of it (the caller's next step sets its own)."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or 443
    except ValueError:
        raise StreamError(f"the broker URL {url} has an invalid port") from None
    try:
        proxy = proxy_for(host, proxy_setting)
    except ValueError as exc:  # the proxy's URL (its message names no secret)
        raise StreamError(str(exc)) from None
    if proxy is None:
        sock = _tcp(host, port, f"{host}:{port}", timeout)
    else:
        try:
            sock = _tcp(proxy.host, proxy.port, str(proxy), timeout)
        except TimeoutError:  # it stalls (a full backlog, a dropped SYN): the proxy's too
            raise OSError(f"cannot connect to {proxy} (timed out)") from None
        except OSError as exc:  # down, or its name unknown: said as the proxy's (proxy.py)
            if not exc.strerror:
                raise
            raise OSError(f"cannot connect to {proxy} ({exc.strerror})") from None
        try:
            time_left(sock, deadline)
            sock.sendall(connect_request(host, port, proxy))
            head, extra = read_head(sock, deadline)
        except BaseException:
            sock.close()
            raise
        if not 200 <= head.status < 300 or extra:
            sock.close()
            raise StreamError(f"{proxy} refused to connect to {host}:{port} ({head.status})")
    context = ssl.create_default_context(cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        time_left(sock, deadline)  # the handshake, all of it (``ssl`` keeps one deadline)
        return context.wrap_socket(sock, server_hostname=AGENT_TLS_NAME)
    except BaseException:
        sock.close()
        raise


def _tcp(host: str, port: int, what: str, timeout: float) -> socket.socket:
    """``socket.create_connection``, whose ``UnicodeError`` (a ``ValueError``) for a
    name it cannot spell in IDNA ("node..example") is an ``OSError`` here, as any
    unreachable address: a failed try, not the doorbell's end."""
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except UnicodeError:
        raise OSError(f"{what}: not a valid host name") from None


def error_code(body: bytes) -> str:
    """The ``code`` of a JSON error answer, else its first words."""
    try:
        said = json.loads(body)
    except (ValueError, RecursionError):
        return body[:80].decode("utf-8", "replace").strip()
    if isinstance(said, dict):
        return str(said.get("code") or said.get("error") or "")[:80]
    return ""


def read_error_body(sock: socket.socket, head: Head, extra: bytes, deadline: float) -> bytes:
    """At most ``MAX_ERROR_BODY`` bytes of an error answer (blocking, what came by
    ``deadline``)."""
    try:
        want = min(int(head.headers.get("content-length", MAX_ERROR_BODY)), MAX_ERROR_BODY)
    except ValueError:
        want = MAX_ERROR_BODY
    data = extra
    try:
        while len(data) < want:
            time_left(sock, deadline)
            chunk = sock.recv(want - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data[:want]


def backoff(attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """1 s, 2 s, 4 s ... 30 s, each jittered down by up to half."""
    top = min(BACKOFF_CAP, 2.0 ** min(attempt, 8))
    return rng(top / 2, top)


def said(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, socket.timeout):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
