"""What every endpoint shares: who is calling, JSON bodies, one error format.

Our errors become JSON ``{"error", "message"}`` answers here and nowhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from ..auth import COOKIE_NAME, Principal
from ..errors import AuditUnavailable, AuthError, EnrolmentError, StoreError
from ..services import Services
from ..wall import BodyTooLarge, origin_allowed

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def remote_of(request: Request) -> str:
    return request.client.host if request.client else "?"


async def json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", "the request body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return data


def services(request: HTTPConnection) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(request: Request, *, admin: bool = False, enrolling: bool = False) -> Principal:
    """Who is calling; state changes also need the CSRF header from login.

    While TOTP is required for all and the caller has none yet, only the
    endpoints that enrol it (``enrolling=True``) answer.
    """
    principal = services(request).auth.principal(request.cookies.get(COOKIE_NAME))
    if principal is None:
        raise ApiError(401, "unauthenticated", "log in first")
    if request.method not in ("GET", "HEAD") and not principal.csrf_ok(
        request.headers.get("x-csrf-token")
    ):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header")
    if principal.must_enrol_totp and not enrolling:
        raise ApiError(
            403, "totp_enrolment_required", "set up two-factor login (TOTP) before anything else"
        )
    if admin and principal.user.role != "admin":
        raise ApiError(403, "forbidden", "this needs the admin role")
    return principal


def websocket_principal(websocket: WebSocket) -> Principal | None:
    """Who opens this WebSocket, or None: then close it with 1008 before accepting.

    Every WebSocket endpoint calls this first. It holds when the Origin header
    is present and exactly the broker's public URL (a page elsewhere cannot
    ride the technician's cookie: CVE-2024-26135), the session cookie names a
    live web session of an enabled user, and no TOTP enrolment is pending.
    The wall already refuses a missing or foreign Origin; this checks again so
    that no endpoint depends on the middleware order.
    """
    svc = services(websocket)
    if not origin_allowed(websocket.scope, svc.public_url):
        return None
    principal = svc.auth.principal(websocket.cookies.get(COOKIE_NAME))
    if principal is None or principal.must_enrol_totp:
        return None
    return principal


async def refuse_websocket(websocket: WebSocket, reason: str = "not allowed") -> None:
    """Close with 1008 (policy violation); before accept the client sees HTTP 403."""
    await websocket.close(code=1008, reason=reason[:120])


Handler = Callable[[Request], Awaitable[Response]]


def api(handler: Handler) -> Handler:
    """Translate our errors into JSON answers at one place."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except (AuthError, EnrolmentError, AuditUnavailable, StoreError, BodyTooLarge) as exc:
            status, code, message = _translate(exc)
            if status >= 500:
                log.error("refused %s %s: %s", request.method, request.url.path, exc)
            return error_response(status, code, message)

    return wrapped


def _translate(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, AuthError):
        return 401, "invalid_credentials", str(exc)
    if isinstance(exc, EnrolmentError):
        return 403, "enrolment_refused", str(exc)
    if isinstance(exc, AuditUnavailable):
        return 503, "audit_unavailable", str(exc)
    if isinstance(exc, StoreError):
        return 503, "store_unavailable", "the broker database is unavailable"
    return 413, "too_large", "the request body is too large"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)
