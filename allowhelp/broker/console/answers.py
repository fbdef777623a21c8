"""Where the broker's errors become HTTP answers and WebSocket close codes: here alone.

Every endpoint raises ``BrokerError`` subclasses (``errors.py``) and lets them
go; starlette's exception handlers (registered in ``app.py``) call
``broker_error`` for all of them. The status and the close code of each
class are in the two tables below, the most specific class first by MRO.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from enum import IntEnum
from typing import TypeVar

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from allowhelp.broker.auth.authenticator import LoginThrottled, TotpRejected, TotpRequired
from allowhelp.broker.errors import (
    AgentTimeout,
    AgentUnreachable,
    AuditUnavailable,
    AuthError,
    BadRequest,
    BrokerError,
    Conflict,
    ConsoleBroke,
    ConsoleFrameTooLarge,
    ConsoleFrameUnsupported,
    EnrolmentError,
    EnrolmentThrottled,
    Forbidden,
    NotFound,
    StoreError,
    TooLarge,
    Unauthenticated,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class CloseCode(IntEnum):
    """WebSocket close codes the broker sends (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    UNSUPPORTED = 1003
    POLICY = 1008  # before accept, the client sees HTTP 403
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013


MAX_CLOSE_REASON = 123  # bytes, by RFC 6455

STATUS: dict[type[BrokerError], int] = {
    BadRequest: 400,
    Unauthenticated: 401,
    TotpRequired: 401,
    TotpRejected: 401,
    AuthError: 401,
    Forbidden: 403,
    EnrolmentError: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    LoginThrottled: 429,
    EnrolmentThrottled: 429,
    AgentUnreachable: 502,
    AgentTimeout: 504,
    AuditUnavailable: 503,
    StoreError: 503,
}

CLOSE: dict[type[BrokerError], CloseCode] = {
    ConsoleBroke: CloseCode.POLICY,
    ConsoleFrameTooLarge: CloseCode.TOO_BIG,
    ConsoleFrameUnsupported: CloseCode.UNSUPPORTED,
    Unauthenticated: CloseCode.POLICY,
    Forbidden: CloseCode.POLICY,
    Conflict: CloseCode.POLICY,
}

# What the caller is told instead of the message, where the message is ours alone.
PUBLIC_MESSAGE: dict[type[BrokerError], str] = {
    StoreError: "the broker database is unavailable",
}


def _first(table: Mapping[type[BrokerError], T], exc: BrokerError, default: T) -> T:
    """The entry of the most specific class of ``exc`` the table has."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def status_of(exc: BrokerError) -> int:
    return _first(STATUS, exc, 500)


def close_code_of(exc: BrokerError) -> CloseCode:
    return _first(CLOSE, exc, CloseCode.INTERNAL)


def public_message(exc: BrokerError) -> str:
    return _first(PUBLIC_MESSAGE, exc, exc.message)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def answer(exc: BrokerError) -> JSONResponse:
    response = error_response(status_of(exc), exc.code, public_message(exc))
    if isinstance(exc, (LoginThrottled, EnrolmentThrottled)):
        response.headers["retry-after"] = str(exc.retry_after)
    return response


def closing_answer(exc: BrokerError) -> JSONResponse:
    """``answer`` that also names its ``code`` and closes the connection: for clients
    that are not browsers and redial (the agents' doorbell, ``api/doorbell.py``)."""
    response = JSONResponse(
        {"error": exc.code, "code": exc.code, "message": public_message(exc)},
        status_code=status_of(exc),
    )
    response.headers["connection"] = "close"
    return response


async def broker_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """starlette's handler for every ``BrokerError``, on HTTP and WebSocket routes."""
    if not isinstance(exc, BrokerError):
        raise exc
    if isinstance(conn, WebSocket):
        await refuse(conn, exc)
        return None
    if status_of(exc) >= 500:
        log.error("refused %s %s: %s", conn.scope.get("method"), conn.url.path, exc)
    return answer(exc)


def close_reason(text: str) -> str:
    """``text`` cut to what a WebSocket close frame can carry (123 UTF-8 bytes)."""
    return text.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


async def refuse(websocket: WebSocket, why: BrokerError | str) -> None:
    """Close with 1008 before accepting (the client sees HTTP 403), or by class after."""
    text = why if isinstance(why, str) else public_message(why)
    code = CloseCode.POLICY if isinstance(why, str) else close_code_of(why)
    log.warning("websocket %s refused: %s", websocket.url.path, text)
    await close_quietly(websocket, code, text)


async def close_quietly(websocket: WebSocket, code: CloseCode, reason: str) -> None:
    """Close, whatever state the socket is in (the browser may be gone already)."""
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(int(code), close_reason(reason))


BINARY = "binary"  # the subprotocol of the terminal's and screen's pages, when offered


async def accept_or_gone(websocket: WebSocket) -> bool:
    """Accept (with ``binary`` when the page offers it); False when the page went
    meanwhile: uvicorn raises its ``ClientDisconnected`` (an ``OSError``) then, and a
    session claimed for that page must be given back by the caller."""
    offered = websocket.scope.get("subprotocols") or []
    try:
        await websocket.accept(subprotocol=BINARY if BINARY in offered else None)
    except OSError:
        return False
    return True
