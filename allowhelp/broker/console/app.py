"""The web application: API routes from ``api/``, the console's static files, errors.

Handlers live in ``api/``, one module per concern; this module only composes
them. Errors become answers through starlette's exception handlers: ours
(``BrokerError``) as ``answers.py`` maps them, starlette's own HTTP errors as
JSON on the API, and anything unhandled as a JSON 500 with the details in the
log only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ExceptionHandler

from allowhelp.broker.console.answers import broker_error, error_response
from allowhelp.broker.console.api import doorbell as api_doorbell
from allowhelp.broker.console.api import enrol as api_enrol
from allowhelp.broker.console.api import events_socket as api_events
from allowhelp.broker.console.api import fleet as api_admin
from allowhelp.broker.console.api import health as api_health
from allowhelp.broker.console.api import invites as api_invites
from allowhelp.broker.console.api import jobs as api_jobs
from allowhelp.broker.console.api import login as api_auth
from allowhelp.broker.console.api import session_endpoints as api_sessions
from allowhelp.broker.console.api import session_extras as api_session_extras
from allowhelp.broker.console.api import session_sockets as api_session_sockets
from allowhelp.broker.console.api import tokens as api_tokens
from allowhelp.broker.console.api import totp as api_totp
from allowhelp.broker.console.api import tunnel_socket as api_tunnel
from allowhelp.broker.console.api import users as api_users
from allowhelp.broker.console.services import Services
from allowhelp.broker.console.static import ConsoleFiles
from allowhelp.broker.console.wall import Wall
from allowhelp.broker.console.webfiles import missing_packages
from allowhelp.broker.errors import BrokerError

log = logging.getLogger(__name__)

# An installed wheel carries the console's files here (setup.py copies them);
# a source checkout (editable install, tests) serves its own web/.
PACKAGED_WEB = Path(__file__).resolve().parent / "webroot"
SOURCE_WEB = Path(__file__).resolve().parents[3] / "web"


def find_web_dir() -> Path:
    """The folder the console is served from: the packaged copy first."""
    for candidate in (PACKAGED_WEB, SOURCE_WEB):
        if (candidate / "index.html").is_file():
            if candidate == SOURCE_WEB and (missing := missing_packages(candidate)):
                log.warning(
                    "the console's session pages will not load: %s missing from %s "
                    "(run npm ci in web/, or install the wheel scripts/package builds)",
                    ", ".join(missing),
                    candidate / "node_modules",
                )
            return candidate
    raise ValueError(
        f"the console's files are missing: neither {PACKAGED_WEB} nor {SOURCE_WEB} has "
        "index.html; install the wheel that scripts/package builds"
    )


async def api_not_found(request: Request) -> Response:
    return error_response(404, "not_found", "no such API endpoint")


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
    web = find_web_dir()

    async def index(request: Request) -> Response:
        return FileResponse(web / "index.html")

    routes = [
        *api_auth.routes(),
        *api_admin.routes(),
        *api_enrol.routes(),
        *api_sessions.routes(),
        *api_session_extras.routes(),
        *api_session_sockets.routes(),
        *api_invites.routes(),
        *api_users.routes(),
        *api_tokens.routes(),
        *api_totp.routes(),
        *api_events.routes(),
        *api_tunnel.routes(),
        *api_doorbell.routes(),
        *api_health.routes(),
        *api_jobs.routes(),
        Route("/api/{rest:path}", api_not_found),
        Route("/", index, methods=["GET"]),
        Mount("/", app=ConsoleFiles(directory=web, check_dir=False)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            BrokerError: cast("ExceptionHandler", broker_error),
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
    app.state.services = svc
    api_events.publish_agent_changes(svc)
    return Wall(app, lambda: svc.public_url)
