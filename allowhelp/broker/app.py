"""The web application: API routes from ``api/``, the console's static files, errors.

Handlers live in ``api/``, one module per concern; this module only composes
them and makes sure nothing unhandled leaves as anything but a JSON 500.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from .api import admin as api_admin
from .api import auth as api_auth
from .api import enrol as api_enrol
from .api import events as api_events
from .api import screen as api_screen
from .api import sessions as api_sessions
from .api import terminal as api_terminal
from .api import tokens as api_tokens
from .api import totp as api_totp
from .api import users as api_users
from .api.base import error_response
from .console_files import ConsoleFiles
from .services import Services
from .wall import Wall

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


async def api_not_found(request: Request) -> Response:
    return error_response(404, "not_found", "no such API endpoint")


async def index(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html")


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if request.url.path.startswith("/api/"):
        code = "method_not_allowed" if status == 405 else "not_found" if status == 404 else "error"
        return error_response(status, code, "request refused")
    return PlainTextResponse(f"{status}", status_code=status)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error; the broker logged the details")


def create_app(svc: Services) -> Wall:
    routes = [
        *api_auth.routes(),
        *api_admin.routes(),
        *api_enrol.routes(),
        *api_sessions.routes(),
        *api_terminal.routes(),
        *api_screen.routes(),
        *api_users.routes(),
        *api_tokens.routes(),
        *api_totp.routes(),
        *api_events.routes(),
        Route("/api/{rest:path}", api_not_found),
        Route("/", index, methods=["GET"]),
        Mount("/", app=ConsoleFiles(directory=WEB_DIR, check_dir=False)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.services = svc
    api_events.publish_agent_changes(svc)
    return Wall(app, lambda: svc.public_url)
