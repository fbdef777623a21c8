"""Reaching the broker from a branch network: direct, or through a web proxy.

Branch firewalls often let only HTTPS out, through a proxy that wants a
password. The agent honours ``https_proxy`` / ``HTTPS_PROXY`` (and
``no_proxy``) and a proxy URL in its configuration (``enroll --proxy``), and
opens every connection to the broker, enrolment and tunnel alike, with HTTP
``CONNECT`` and Basic authentication through it: no connection bypasses it.

The proxy's password lives in ``Proxy`` only: ``str(proxy)`` and every
message name the proxy by host and port, never with its credentials.
The request and the answer's head are plain functions (no I/O), tested apart.

A proxy that is down, refuses ``CONNECT``, stalls or answers garbage is a
network failure (``ProxyError``, an ``OSError``): the tunnel logs it and tries
again after its backoff, however long it lasts. A setting that can never work
(not an ``http://`` URL, a bad port, no host or one IDNA cannot spell, a path, query
or fragment: ``proxyurl.parse_proxy``) cannot mend while the agent runs:
it reads ``https_proxy`` and ``agent.json`` once, at start. ``check_setting``
refuses it then, in one line naming where it came from (``ConfigError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket

from allowhelp.agent.errors import ProxyError
from allowhelp.agent.i18n import _

# The proxy's URL, its start-up check and the CONNECT request, without asyncio (the
# doorbell uses them too): re-exported here, where the tunnel and enrolment have always found them.
from allowhelp.agent.proxyurl import (
    DIRECT,
    Proxy,
    check_setting,
    connect_request,
    parse_proxy,
    proxy_for,
)
from allowhelp.protocol.text import ascii_digits

__all__ = [
    "CONNECT_TIMEOUT",
    "DIRECT",
    "Proxy",
    "answer_head_length",
    "check_answer",
    "check_setting",
    "connect_request",
    "open_connection",
    "parse_proxy",
    "proxy_for",
    "refusal_hint",
]

CONNECT_TIMEOUT = 15.0  # TCP connect and the proxy's answer, each
MAX_ANSWER_HEAD = 16 * 1024


def answer_head_length(buffer: bytes) -> int | None:
    """Bytes of the answer's head (through the blank line), once it is all there."""
    end = buffer.find(b"\r\n\r\n")
    return None if end < 0 else end + 4


def check_answer(head: bytes, proxy: Proxy, target: str) -> None:
    """Accept a 2xx answer to CONNECT; anything else is a ``ProxyError`` that
    says what the proxy said (407: a password, 403: not allowed, 502: ...)."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not ascii_digits(parts[1]):
        raise ProxyError(f"{proxy} did not answer as an HTTP proxy")
    status = int(parts[1])
    if 200 <= status < 300:
        return
    reason = parts[2].strip()[:80] if len(parts) > 2 else ""
    said = f"{status} {reason}".strip()
    hint = refusal_hint(status, proxy, target)
    raise ProxyError(
        f"{proxy} refused to connect to {target} ({said})" + (f": {hint}" if hint else "")
    )


def refusal_hint(status: int, proxy: Proxy, target: str) -> str:
    """What a proxy's refusal means for the admin (some proxies answer 401 for 407)."""
    if status in (401, 407):
        if proxy.authorization() is None:
            return _("it wants a user and password (put them in the proxy URL)")
        return _("it refused the user and password")
    if status == 403:
        return _("it does not allow connections to %(target)s") % {"target": target}
    return ""


async def open_connection(host: str, port: int, proxy: Proxy | None) -> socket.socket:
    """A connected TCP socket to ``host:port``, through ``proxy`` when given."""
    if proxy is None:
        return await _tcp(host, port, f"{host}:{port}")
    try:
        sock = await _tcp(proxy.host, proxy.port, str(proxy))
    except ProxyError:
        raise
    except OSError as exc:  # down, or its name unknown: said as the proxy's
        raise ProxyError(f"cannot connect to {proxy} ({_reason(exc)})") from exc
    try:
        await _connect_through(sock, host, port, proxy)
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(exc: OSError) -> str:
    """Why a connection failed as the system says it: "Connection refused", not
    asyncio's "Connect call failed ('10.0.0.1', 3128)"."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


async def _tcp(host: str, port: int, what: str) -> socket.socket:
    try:  # wait_for, not asyncio.timeout: the agent runs on Python 3.10 too
        return await asyncio.wait_for(_tcp_now(host, port, what), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:  # not TimeoutError before 3.11
        raise OSError(errno.ETIMEDOUT, f"connecting to {what} timed out") from None
    except UnicodeError:  # a name the resolver cannot spell (IDNA), e.g. "proxy..example"
        raise OSError(f"{what}: not a valid host name") from None


async def _tcp_now(host: str, port: int, what: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {what}")
    for family, kind, proto, _canonname, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


async def _connect_through(sock: socket.socket, host: str, port: int, proxy: Proxy) -> None:
    loop = asyncio.get_running_loop()
    target = f"{host}:{port}"

    async def ask() -> bytes:
        await loop.sock_sendall(sock, connect_request(host, port, proxy))
        return await _read_head(loop, sock, proxy)

    try:
        head = await asyncio.wait_for(ask(), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:  # not TimeoutError before 3.11
        raise ProxyError(f"{proxy} did not answer within {CONNECT_TIMEOUT:g} s") from None
    except ProxyError:
        raise
    except OSError as exc:
        raise ProxyError(f"{proxy} cut the connection ({exc.strerror or exc})") from exc
    check_answer(head, proxy, target)


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy) -> bytes:
    """The answer's head, and not one byte more: what follows is the broker's."""
    while True:
        await _readable(loop, sock)
        peeked = sock.recv(MAX_ANSWER_HEAD, socket.MSG_PEEK)
        if not peeked:
            raise ProxyError(f"{proxy} closed the connection without answering")
        length = answer_head_length(peeked)
        if length is not None:
            return _recv_exactly(sock, length)
        if len(peeked) >= MAX_ANSWER_HEAD:
            raise ProxyError(f"{proxy} sent an answer head over {MAX_ANSWER_HEAD} bytes")
        await asyncio.sleep(0.01)  # more of the head is on its way


def _recv_exactly(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:  # already peeked: in the kernel's buffer
        data += sock.recv(length - len(data))
    return data


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
