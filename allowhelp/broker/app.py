"""The HTTP API and the console's static files (starlette).

Handlers are thin: they parse, check who is calling, and call the services.
Every error leaves as JSON ``{"error", "message"}``; no traceback ever does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .audit import AuditLog
from .auth import COOKIE_NAME, Authenticator, Principal
from .enrolment import EnrolmentDesk
from .errors import AuditUnavailable, AuthError, EnrolmentError, StoreError
from .registry import AgentRegistry
from .store import Store
from .wall import BodyTooLarge, Wall

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


@dataclass
class Services:
    store: Store
    audit: AuditLog
    auth: Authenticator
    registry: AgentRegistry
    enrolment: EnrolmentDesk
    ca_pem: bytes
    public_url: str


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


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(request: Request, *, admin: bool = False) -> Principal:
    """Who is calling; state changes also need the CSRF header from login."""
    principal = services(request).auth.principal(request.cookies.get(COOKIE_NAME))
    if principal is None:
        raise ApiError(401, "unauthenticated", "log in first")
    if request.method not in ("GET", "HEAD") and not principal.csrf_ok(
        request.headers.get("x-csrf-token")
    ):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header")
    if admin and principal.user.role != "admin":
        raise ApiError(403, "forbidden", "this needs the admin role")
    return principal


Handler = Callable[[Request], Awaitable[Response]]


def api(handler: Handler) -> Handler:
    """Translate our errors into JSON answers at one place."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except (AuthError, EnrolmentError, AuditUnavailable, StoreError, BodyTooLarge) as exc:
            status, code, message = _translate(exc)
            if status >= 500:
                log.error("refused %s %s: %s", request.method, request.url.path, exc)
            return _error(status, code, message)

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


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


@api
async def login(request: Request) -> Response:
    body = await json_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "bad_request", "username and password are required strings")
    svc = services(request)
    result = await svc.auth.login(username, password, remote_of(request))
    response = JSONResponse(
        {
            "csrf_token": result.csrf_token,
            "user": {
                "username": result.user.username,
                "full_name": result.user.full_name,
                "role": result.user.role,
            },
        }
    )
    response.set_cookie(
        COOKIE_NAME,
        result.cookie_value,
        max_age=int(result.expires - time.time()),
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


@api
async def logout(request: Request) -> Response:
    principal = require(request)
    await services(request).auth.logout(principal, remote_of(request))
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
    return response


@api
async def me(request: Request) -> Response:
    user = require(request).user
    return JSONResponse({"username": user.username, "full_name": user.full_name, "role": user.role})


@api
async def agents(request: Request) -> Response:
    require(request)
    svc = services(request)
    rows = []
    for agent in svc.store.agents():
        live = svc.registry.get(agent.id)
        rows.append(
            {
                "id": agent.id,
                "hostname": agent.hostname,
                "online": live is not None,
                "os": agent.os,
                "user": agent.username,
                "version": agent.version,
                "enrolled": agent.enrolled,
                "last_seen": agent.last_seen,
                "connected_since": live.connected_since if live else None,
            }
        )
    rows.sort(key=lambda row: (not row["online"], str(row["hostname"]).lower()))
    return JSONResponse(rows)


@api
async def audit_records(request: Request) -> Response:
    require(request, admin=True)
    try:
        after = int(request.query_params.get("after", "0"))
        limit = min(int(request.query_params.get("limit", "500")), 1000)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "after and limit must be whole numbers") from exc
    if after < 0 or limit < 1:
        raise ApiError(400, "bad_request", "after must be >= 0 and limit >= 1")
    records = services(request).audit.records(after=after, limit=limit)
    return JSONResponse([record.to_json() for record in records])


@api
async def enrol_ca(request: Request) -> Response:
    return PlainTextResponse(services(request).ca_pem, media_type="application/x-pem-file")


@api
async def enrol(request: Request) -> Response:
    body = await json_body(request)
    reply = await services(request).enrolment.enrol(body, remote_of(request))
    return JSONResponse(reply.to_json(), status_code=201)


async def api_not_found(request: Request) -> Response:
    return _error(404, "not_found", "no such API endpoint")


async def index(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html")


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if request.url.path.startswith("/api/"):
        code = "method_not_allowed" if status == 405 else "not_found" if status == 404 else "error"
        return _error(status, code, "request refused")
    return PlainTextResponse(f"{status}", status_code=status)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal", "internal error; the broker logged the details")


def create_app(svc: Services) -> Wall:
    routes = [
        Route("/api/v1/login", login, methods=["POST"]),
        Route("/api/v1/logout", logout, methods=["POST"]),
        Route("/api/v1/me", me, methods=["GET"]),
        Route("/api/v1/agents", agents, methods=["GET"]),
        Route("/api/v1/audit", audit_records, methods=["GET"]),
        Route("/api/v1/enrol/ca", enrol_ca, methods=["GET"]),
        Route("/api/v1/enrol", enrol, methods=["POST"]),
        Route("/api/{rest:path}", api_not_found),
        Route("/", index, methods=["GET"]),
        Mount("/", app=StaticFiles(directory=WEB_DIR, check_dir=False)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.services = svc
    return Wall(app, lambda: svc.public_url)
