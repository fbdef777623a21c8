"""The web wall: ASGI middleware every request and WebSocket passes through.

Security headers, no-store on the API, a body size cap, and the Origin rule
for anything that changes state. Pure ASGI so it also sees WebSocket upgrades
and costs nothing on the relay path once a socket is open: a WebSocket
upgrade without an Origin, or with any Origin but the broker's public URL, is
refused here (HTTP 403) before any endpoint runs; the one exception is the
agents' tunnel (``wsbridge.PATH``), which no browser may open: that endpoint
refuses every upgrade that carries an Origin. Slow or oversized request
heads are stopped one layer lower, in ``httpguard``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from allowhelp.broker.console.answers import CloseCode, answer
from allowhelp.broker.errors import BrokerError, Forbidden, TooLarge
from allowhelp.protocol.text import ascii_digits
from allowhelp.wsbridge import PATH as TUNNEL_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 1024
UPLOAD_PATH = re.compile(r"/api/v1/sessions/[A-Za-z0-9_-]{8,40}/files/content")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
NO_STORE = (b"cache-control", b"no-store")
# xterm.js, noVNC and the recording player size and colour their cells with
# inline <style>: those pages allow inline *styles* (never inline scripts); the
# player also compiles its WebAssembly terminal ('wasm-unsafe-eval' allows
# WebAssembly only, not JavaScript eval). Every other page stays strict.
_INLINE_STYLES = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
PAGE_CSP = {
    "/terminal.html": _INLINE_STYLES,
    "/screen.html": _INLINE_STYLES,
    "/replay-screen.html": _INLINE_STYLES,  # noVNC, fed from a recording
    "/replay.html": _INLINE_STYLES.replace(
        "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
    ),
}


def page_headers(path: str) -> list[tuple[bytes, bytes]]:
    csp = PAGE_CSP.get(path)
    return HEADERS if csp is None else [(b"content-security-policy", csp.encode()), *HEADERS[1:]]


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def origin_allowed(scope: Scope, public_url: str) -> bool:
    """Exact match only: no prefix, no scheme-less, no 'null'."""
    origin = header(scope, b"origin")
    return origin is not None and origin.lower() == public_url


class Wall:
    def __init__(self, app: ASGIApp, public_url: Callable[[], str]) -> None:
        self._app = app
        self._public_url = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == TUNNEL_PATH:
            await self._app(scope, receive, send)  # agents, not browsers: Origin refused there
            return
        if scope["type"] == "websocket" and not origin_allowed(scope, self._public_url()):
            # Browsers always send Origin on a WebSocket; none, or another
            # site's, is cross-site WebSocket hijacking or not a browser at all.
            await _refuse_websocket(receive, send)
            return
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        is_api = str(scope.get("path", "")).startswith("/api/")
        method = str(scope.get("method", "GET"))
        # Browsers always send Origin on a cross-site POST; a foreign one is
        # refused before any handler (login included) sees the request.
        foreign = header(scope, b"origin") is not None and not origin_allowed(
            scope, self._public_url()
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [*HEADERS, NO_STORE] if is_api else page_headers(str(scope.get("path")))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        streamed = is_file_upload(method, str(scope.get("path", "")))
        refusal = self._refusal(scope, method, foreign, streamed)
        if refusal is not None:
            response = answer(refusal)
            response.headers["connection"] = "close"
            await response(scope, receive, send_with_headers)
            return
        # A file upload streams to the PC and is bounded by the file limit instead.
        await self._app(scope, receive if streamed else _capped(receive), send_with_headers)

    @staticmethod
    def _refusal(scope: Scope, method: str, foreign: bool, streamed: bool) -> BrokerError | None:
        if method not in SAFE_METHODS and foreign:
            return Forbidden("this origin may not call the API", code="foreign_origin")
        declared = header(scope, b"content-length")
        if declared is not None and (
            not ascii_digits(declared) or (int(declared) > MAX_BODY and not streamed)
        ):
            return TooLarge(f"request bodies are limited to {MAX_BODY} bytes")
        return None


def is_file_upload(method: str, path: str) -> bool:
    """``PUT /api/v1/sessions/{id}/files/content``: the one body that is not JSON."""
    return method == "PUT" and UPLOAD_PATH.fullmatch(path) is not None


def _capped(receive: Receive) -> Receive:
    """Stop a chunked body that grows past the cap even without Content-Length."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:  # raised inside the handler's body read: a 413 answer
                raise TooLarge(f"request bodies are limited to {MAX_BODY} bytes")
        return message

    return wrapped


async def _refuse_websocket(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] == "websocket.connect":
        # Closing before accepting makes the server answer the upgrade with 403.
        await send(
            {"type": "websocket.close", "code": CloseCode.POLICY, "reason": "foreign origin"}
        )
