"""Sessions and help requests over HTTP, and the terminal WebSocket.

A technician sees and ends only their own sessions (admins: all), and only
the technician the PC user consented to may attach to a session's terminal —
an admin included, because the consent named that technician.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..auth import Principal
from ..recording import file_sha256
from ..session import IllegalTransition, Session
from ..sessions import SessionError
from .base import ApiError, api, json_body, require, services

log = logging.getLogger(__name__)

POLICY = 1008
INTERNAL = 1011


def _visible(principal: Principal, session: Session | None) -> Session:
    if session is None or (
        principal.user.role != "admin" and session.technician != principal.user.username
    ):
        raise ApiError(404, "not_found", "no such session")
    return session


def _translate(exc: SessionError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


@api
async def create(request: Request) -> Response:
    principal = require(request)
    body = await json_body(request)
    help_code = body.get("help_code") or ""
    try:
        session = await services(request).sessions.request(
            technician=principal.user.username,
            technician_name=principal.user.full_name,
            agent_id=str(body.get("agent_id", "")),
            kind=str(body.get("kind", "")),
            reason=body.get("reason"),
            help_code=help_code if isinstance(help_code, str) else "",
        )
    except SessionError as exc:
        raise _translate(exc) from exc
    return JSONResponse(session.to_json(), status_code=201)


@api
async def listed(request: Request) -> Response:
    principal = require(request)
    rows = services(request).sessions.listed(
        principal.user.username, principal.user.role == "admin"
    )
    return JSONResponse([s.to_json() for s in rows])


@api
async def one(request: Request) -> Response:
    principal = require(request)
    session = services(request).sessions.get(request.path_params["session_id"])
    return JSONResponse(_visible(principal, session).to_json())


@api
async def end(request: Request) -> Response:
    principal = require(request)
    registry = services(request).sessions
    session = _visible(principal, registry.get(request.path_params["session_id"]))
    try:
        ended = await registry.end(session.id, reason="technician", actor=principal.actor)
    except IllegalTransition as exc:
        raise ApiError(409, "already_over", f"the session is already {session.state}") from exc
    return JSONResponse(ended.to_json())


@api
async def help_requests(request: Request) -> Response:
    require(request)
    tickets = services(request).help_desk.open_tickets()
    return JSONResponse([t.to_json() for t in tickets])


@api
async def recording(request: Request) -> Response:
    """Admins replay a shell; the file must still match the digest the audit log holds."""
    principal = require(request, admin=True)
    svc = services(request)
    session = svc.sessions.get(request.path_params["session_id"])
    if session is None or not session.recording or not session.recording_sha256:
        raise ApiError(404, "not_found", "no recording for this session")
    path = svc.settings.data_dir / "recordings" / Path(session.recording).name
    if not path.is_file():
        raise ApiError(404, "not_found", "the recording file is missing")
    if await asyncio.to_thread(file_sha256, path) != session.recording_sha256:
        raise ApiError(409, "recording_altered", "the recording does not match its audit digest")
    # Watching someone's shell again is itself an access to that PC's data.
    await svc.audit.write(
        "session.replayed",
        actor=principal.actor,
        target=session.id,
        details={**session.summary(), "recording_sha256": session.recording_sha256},
    )
    return FileResponse(path, media_type="application/x-asciicast")


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/sessions", create, methods=["POST"]),
        Route("/api/v1/sessions", listed, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}", one, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}/end", end, methods=["POST"]),
        Route("/api/v1/sessions/{session_id}/recording", recording, methods=["GET"]),
        Route("/api/v1/help-requests", help_requests, methods=["GET"]),
    ]
