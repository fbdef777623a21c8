"""Sessions and help requests over HTTP, and the terminal WebSocket.

A technician sees and ends only their own sessions (admins: all), and only
the technician the PC user consented to may attach to a session's terminal —
an admin included, because the consent named that technician.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from allowhelp.protocol.control import EndReason

from ..agentlink import AgentLink
from ..auth import COOKIE_NAME, Principal
from ..errors import AuditUnavailable, TunnelError
from ..recording import AsciicastRecorder, file_sha256
from ..relay import SHELL_WINDOW, TerminalRelay
from ..services import Services
from ..session import IllegalTransition, Session, State
from ..sessions import SessionError
from ..wall import origin_allowed
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
    require(request, admin=True)
    svc = services(request)
    session = svc.sessions.get(request.path_params["session_id"])
    if session is None or not session.recording or not session.recording_sha256:
        raise ApiError(404, "not_found", "no recording for this session")
    path = svc.settings.data_dir / "recordings" / Path(session.recording).name
    if not path.is_file():
        raise ApiError(404, "not_found", "the recording file is missing")
    if await asyncio.to_thread(file_sha256, path) != session.recording_sha256:
        raise ApiError(409, "recording_altered", "the recording does not match its audit digest")
    return FileResponse(path, media_type="application/x-asciicast")


def websocket_principal(websocket: WebSocket, svc: Services) -> Principal | None:
    """The WebSocket wall: exact Origin and a live session cookie, or nobody."""
    if not origin_allowed(websocket.scope, svc.public_url):
        return None
    return svc.auth.principal(websocket.cookies.get(COOKIE_NAME))


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    log.warning("websocket %s refused: %s", websocket.url.path, reason)
    await websocket.close(code, reason)


async def terminal(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    principal = websocket_principal(websocket, svc)
    if principal is None:
        await _refuse(websocket, POLICY, "foreign origin or not logged in")
        return
    session = svc.sessions.get(websocket.path_params["session_id"])
    if session is None or session.technician != principal.user.username:
        await _refuse(websocket, POLICY, "not your session")
        return
    if session.kind != "shell" or session.state is not State.ACTIVE:
        await _refuse(websocket, POLICY, f"the session is {session.state}, not an active shell")
        return
    live = svc.registry.get(session.agent_id)
    if live is None:
        await _refuse(websocket, POLICY, "the machine is offline")
        return
    await websocket.accept()
    await _relay_shell(websocket, svc, session, live.link)


async def _relay_shell(
    websocket: WebSocket, svc: Services, session: Session, link: AgentLink
) -> None:
    cols = _int(websocket.query_params.get("cols"), 80, 2, 1000)
    rows = _int(websocket.query_params.get("rows"), 24, 1, 500)
    recorder = AsciicastRecorder(
        svc.settings.data_dir / "recordings",
        session.id,
        cols,
        rows,
        title=f"{session.hostname} — {session.technician}",
    )
    relay = TerminalRelay(websocket, recorder)
    svc.sessions.attach_relay(session.id, relay.stop)
    reason: EndReason = "error"
    try:
        await svc.sessions.audit_started(session, {"cols": cols, "rows": rows})
        chan, _ = await link.open_channel(
            relay.factory,
            "shell",
            session.id,
            term=("xterm-256color", cols, rows),
            window=SHELL_WINDOW,
        )
        reason = await relay.run(chan)
    except (TunnelError, AuditUnavailable) as exc:
        log.error("session=%s shell could not start: %s", session.id, exc)
        await websocket.close(INTERNAL, str(exc)[:120])
    finally:
        await svc.sessions.end_quietly(
            session.id, reason=reason, actor=f"technician:{session.technician}"
        )
        relay.stop()
        await _close(websocket, reason)


async def _close(websocket: WebSocket, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):
        await websocket.close(1000, f"session ended: {reason}")


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value or default), low), high)
    except ValueError:
        return default


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/sessions", create, methods=["POST"]),
        Route("/api/v1/sessions", listed, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}", one, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}/end", end, methods=["POST"]),
        Route("/api/v1/sessions/{session_id}/recording", recording, methods=["GET"]),
        Route("/api/v1/help-requests", help_requests, methods=["GET"]),
        WebSocketRoute("/api/v1/sessions/{session_id}/terminal", terminal),
    ]
