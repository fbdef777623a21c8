"""Invitations over HTTP, and an invitee's terminal or screen (#18).

``POST /api/v1/sessions/{id}/invite`` ``{"username", "mode": "observe"|"control"}``
(the session's own technician: others 403) asks the PC user; 201 with the
invitation. ``GET /api/v1/sessions/{id}/invites`` lists them (the owner, admins).
``DELETE /api/v1/sessions/{id}/invite/{username}`` revokes one (the owner).

An invitee attaches through the session's usual WebSockets
(``session_sockets.py`` hands them here): only once the PC user allowed them.
"""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.websockets import WebSocket

from allowhelp.broker.console.answers import (
    CloseCode,
    accept_or_gone,
    close_code_of,
    close_quietly,
    refuse,
)
from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.console.api.node_routes import or_elsewhere
from allowhelp.broker.console.api.recorders import screen_recorder
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import AuditUnavailable, BrokerError, NotFound
from allowhelp.broker.relay.outcome import Relay
from allowhelp.broker.relay.participant import ParticipantTerminalRelay
from allowhelp.broker.relay.screen import ScreenRelay
from allowhelp.broker.relay.terminal import terminal_size
from allowhelp.broker.sessions.invitation import Invitation
from allowhelp.protocol.kinds import Kind
from allowhelp.protocol.text import ascii_digits


async def invite(request: Request) -> Response:
    principal = await require(request)
    body = await json_body(request)
    invitation = await services(request).invites.invite(
        request.path_params["session_id"],
        owner=principal.user.username,
        owner_name=principal.user.full_name or principal.user.username,
        username=body.get("username"),
        mode=body.get("mode"),
    )
    return JSONResponse(invitation.to_json(), status_code=201)


async def listed(request: Request) -> Response:
    principal = await require(request)
    svc = services(request)
    session_id = request.path_params["session_id"]
    session = svc.sessions.live(session_id)
    if session is None or (
        principal.user.role != "admin" and session.technician != principal.user.username
    ):
        raise NotFound("no such session, or it is over")
    return JSONResponse([i.to_json() for i in svc.invites.of_session(session_id)])


async def revoke(request: Request) -> Response:
    principal = await require(request)
    invitation = await services(request).invites.revoke(
        request.path_params["session_id"],
        request.path_params["username"],
        owner=principal.user.username,
    )
    return JSONResponse(invitation.to_json())


def _relay(websocket: WebSocket, kind: Kind, invitation: Invitation) -> Relay:
    svc = services(websocket)
    session = svc.sessions.live(invitation.session_id)
    if kind == "screen":
        if invitation.mode != "control" or session is None:
            return ScreenRelay(websocket, view_only=True)
        # Their input goes into the session's one recording under their name; the
        # PC's stream is the owner's relay's to record (attached: ``InviteDesk.claim``).
        return ScreenRelay(
            websocket,
            screen_recorder(svc, session),
            view_only=False,
            sender=invitation.username,
            input_only=True,
        )
    cols, rows = _number(websocket, "cols", 80), _number(websocket, "rows", 24)
    shell: Kind = session.kind if session is not None else "shell"
    return ParticipantTerminalRelay(
        websocket,
        shell,
        terminal_size(cols, rows),
        may_type=invitation.mode == "control",
        session_id=invitation.session_id,
    )


def _number(websocket: WebSocket, name: str, default: int) -> int:
    value = websocket.query_params.get(name) or ""
    return int(value) if ascii_digits(value) and len(value) < 6 else default


async def attach_invitee(websocket: WebSocket, svc: Services, username: str, kind: Kind) -> None:
    """An invitee opens the session's terminal or screen; anyone else is refused
    and that is audited."""
    session_id = websocket.path_params["session_id"]
    try:
        joined, link, relay = svc.invites.claim(
            session_id, username, kind, lambda found: _relay(websocket, kind, found)
        )
    except BrokerError as exc:
        with contextlib.suppress(AuditUnavailable):  # said by the writer; refused all the same
            await svc.invites.refused(session_id, username, exc)
        await refuse(websocket, exc)
        return
    if not await accept_or_gone(websocket):  # the page went meanwhile
        await svc.invites.gone_before(joined, relay)
        return
    outcome = await svc.invites.run(joined, link, relay)
    if outcome.failure is not None:
        await close_quietly(websocket, close_code_of(outcome.failure), outcome.failure.message)
    else:
        await close_quietly(websocket, CloseCode.NORMAL, f"left the session: {outcome.reason}")


def routes() -> list[BaseRoute]:
    return [
        # or_elsewhere: served by the node running the session (#21, node_routes.py)
        Route("/api/v1/sessions/{session_id}/invite", or_elsewhere(invite), methods=["POST"]),
        Route("/api/v1/sessions/{session_id}/invites", or_elsewhere(listed), methods=["GET"]),
        Route(
            "/api/v1/sessions/{session_id}/invite/{username}",
            or_elsewhere(revoke),
            methods=["DELETE"],
        ),
    ]
