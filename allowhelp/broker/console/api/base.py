"""What every endpoint shares: who is calling, and JSON bodies.

Endpoints raise ``BrokerError`` subclasses; ``console/answers.py`` turns them
into JSON ``{"error", "message"}`` answers, for every route at once.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

from allowhelp.broker.auth.authenticator import COOKIE_NAME, Principal
from allowhelp.broker.console.services import Services
from allowhelp.broker.console.wall import origin_allowed
from allowhelp.broker.errors import BadRequest, Forbidden, Unauthenticated
from allowhelp.protocol.hostile_json import lone_surrogate


def remote_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def json_object(data: bytes | str) -> dict[str, Any]:
    """A JSON object from hostile text, or ``BadRequest`` (nesting too deep included)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("the request body must be a JSON object", code="bad_json") from exc
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object", code="bad_json")
    if lone_surrogate(value):  # would reach SQLite or argon2 and fail there, unaudited
        raise BadRequest(
            "the request body holds a string that is not Unicode text (a lone surrogate)",
            code="bad_json",
        )
    return value


async def json_body(request: Request) -> dict[str, Any]:
    return json_object(await request.body())


def services(request: HTTPConnection) -> Services:
    svc: Services = request.app.state.services
    return svc


async def require(request: Request, *, admin: bool = False, enrolling: bool = False) -> Principal:
    """Who is calling; state changes also need the CSRF header from login.

    While TOTP is required for all and the caller has none yet, only the
    endpoints that enrol it (``enrolling=True``) answer. ``StoreError`` (503)
    when the database cannot say.
    """
    principal = await services(request).auth.principal(request.cookies.get(COOKIE_NAME))
    if principal is None:
        raise Unauthenticated("log in first")
    if request.method not in ("GET", "HEAD") and not principal.csrf_ok(
        request.headers.get("x-csrf-token")
    ):
        raise Forbidden("missing or wrong X-CSRF-Token header", code="csrf")
    if principal.must_enrol_totp and not enrolling:
        raise Forbidden(
            "set up two-factor login (TOTP) before anything else", code="totp_enrolment_required"
        )
    if admin and principal.user.role != "admin":
        raise Forbidden("this needs the admin role")
    return principal


async def websocket_principal(websocket: WebSocket) -> Principal:
    """Who opens this WebSocket, or ``Unauthenticated``: then it closes with 1008
    before accepting (the client sees HTTP 403).

    Every WebSocket endpoint calls this first. It holds when the Origin header
    is present and exactly the broker's public URL (a page elsewhere cannot
    ride the technician's cookie: CVE-2024-26135), the session cookie names a
    live web session of an enabled user, and no TOTP enrolment is pending.
    The wall already refuses a missing or foreign Origin; this checks again so
    that no endpoint depends on the middleware order.
    """
    svc = services(websocket)
    if not origin_allowed(websocket.scope, svc.public_url):
        raise Unauthenticated("foreign origin or not logged in")
    principal = await svc.auth.principal(websocket.cookies.get(COOKIE_NAME))
    if principal is None or principal.must_enrol_totp:
        raise Unauthenticated("foreign origin or not logged in")
    return principal
