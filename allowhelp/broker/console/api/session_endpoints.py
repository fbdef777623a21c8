"""Sessions and help requests over HTTP.

A technician sees and ends only their own sessions (admins: all). Attaching
to a session's terminal or screen is ``session_sockets.py``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from allowhelp.broker.audit.integrity import check_digest_record
from allowhelp.broker.audit.rfb_format import FORMAT, MEDIA_TYPE, SUFFIX
from allowhelp.broker.auth.authenticator import Principal
from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.console.api.node_routes import (
    came_from_node,
    create_elsewhere,
    invited_elsewhere,
    or_elsewhere,
)
from allowhelp.broker.console.api.replayfile import OpenRecording
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import BadRequest, Conflict, IllegalTransition, NotFound
from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.invitation import invitee_view

log = logging.getLogger(__name__)


def _visible(principal: Principal, session: Session | None) -> Session:
    if session is None or (
        principal.user.role != "admin" and session.technician != principal.user.username
    ):
        raise NotFound("no such session")
    return session


async def create(request: Request) -> Response:
    principal = await require(request)
    body = await json_body(request)
    elsewhere = await create_elsewhere(request, principal.actor, str(body.get("agent_id", "")))
    if elsewhere is not None:  # the agent's tunnel is on another node (#21)
        return elsewhere
    help_code = body.get("help_code") or ""
    session = await services(request).sessions.request(
        technician=principal.user.username,
        technician_name=principal.user.full_name,
        agent_id=str(body.get("agent_id", "")),
        kind=str(body.get("kind", "")),
        reason=body.get("reason"),
        help_code=help_code if isinstance(help_code, str) else "",
        ticket=body.get("ticket", ""),
        monitor=body.get("monitor", ""),
        view_only=body.get("view_only", False),
    )
    return JSONResponse(session.to_json(), status_code=201)


async def listed(request: Request) -> Response:
    """The caller's sessions (admins: all) and those they are invited to (#18), from
    every node: the store has every node's sessions, each node its own invitations.
    Asked by another node, only this node's invitee views (``node_routes.py``)."""
    principal = await require(request)
    svc = services(request)
    invited = svc.invites.sessions_for(principal.user.username)  # #18: sessions I may join
    here = svc.sessions.owner_state
    views = [invitee_view(s, i, owner_here=here(s.id) is True) for s, i in invited]
    if came_from_node(request):
        return JSONResponse(views)
    rows = await svc.sessions.listed(principal.user.username, principal.user.role == "admin")
    listed: list[dict[str, object]] = [s.to_json() for s in rows]
    known = {s.id for s in rows}
    elsewhere = await invited_elsewhere(request, principal.actor)
    for view in (*views, *elsewhere):
        if view["id"] not in known:
            known.add(str(view["id"]))
            listed.append(view)
    return JSONResponse(listed)


async def one(request: Request) -> Response:
    principal = await require(request)
    svc = services(request)
    session = await svc.sessions.get(request.path_params["session_id"])
    invitation = svc.invites.seen_by(session.id, principal.user.username) if session else None
    if session is not None and invitation is not None and session.technician != invitation.username:
        view = invitee_view(
            session, invitation, owner_here=svc.sessions.owner_state(session.id) is True
        )
        return JSONResponse(view)  # an invitee (#18)
    return JSONResponse(_visible(principal, session).to_json())


async def patch(request: Request) -> Response:
    """The session's technician writes notes (``{"notes": TEXT}``); audited."""
    principal = await require(request)
    body = await json_body(request)
    registry = services(request).sessions
    session = await registry.get(request.path_params["session_id"])
    if session is None or session.technician != principal.user.username:
        raise NotFound("no such session")  # notes are the session's technician's alone
    if set(body) != {"notes"}:
        raise BadRequest('send {"notes": TEXT}', code="bad_request")
    changed = await registry.set_notes(session.id, body["notes"], actor=principal.actor)
    return JSONResponse(changed.to_json())


async def end(request: Request) -> Response:
    principal = await require(request)
    registry = services(request).sessions
    session = _visible(principal, await registry.get(request.path_params["session_id"]))
    try:
        ended = await registry.end(session.id, reason="technician", actor=principal.actor)
    except IllegalTransition as exc:
        raise Conflict(f"the session is already {session.state}", code="already_over") from exc
    return JSONResponse(ended.to_json())


async def help_requests(request: Request) -> Response:
    await require(request)
    tickets = await services(request).help_desk.open_tickets()
    return JSONResponse([t.to_json() for t in tickets])


async def recording(request: Request) -> Response:
    """Admins replay a shell or a screen; the file must still match the digest the
    audit log holds. A refusal for that reason is itself audited."""
    principal = await require(request, admin=True)
    svc = services(request)
    session = await svc.sessions.get(request.path_params["session_id"])
    if session is None or not session.recording or not session.recording_sha256:
        raise NotFound("no recording for this session")
    path = svc.settings.recordings_dir / Path(session.recording).name
    try:
        opened = OpenRecording(path)  # checked and served from this one descriptor
    except OSError as exc:
        raise NotFound("the recording file is missing") from exc
    try:
        seq = await _verified(svc, session, opened)
    except BaseException as exc:
        opened.close()
        if isinstance(exc, Conflict):
            await _refused(svc, principal, session, exc)
        raise
    # Watching someone's shell or screen again is itself an access to that PC's data.
    try:
        await svc.audit.write(
            "session.replayed",
            actor=principal.actor,
            target=session.id,
            details={
                **session.summary(),
                "recording_sha256": session.recording_sha256,
                "digest_record": seq,
            },
        )
    except BaseException:
        opened.close()
        raise
    screen = path.suffix == SUFFIX
    return StreamingResponse(
        opened.stream(session.recording_sha256),
        background=BackgroundTask(opened.close),  # also when the stream never started
        media_type=MEDIA_TYPE if screen else "application/x-asciicast",
        headers={
            "X-Recording-Format": FORMAT if screen else "asciicast-v2",
            "Content-Length": str(opened.size),
        },
    )


async def _refused(svc: Services, principal: Principal, session: Session, exc: Conflict) -> None:
    """A replay refused because the file or its record does not hold: on the record."""
    await svc.audit.write(
        "recording.refused",
        actor=principal.actor,
        target=session.id,
        details={
            **session.summary(),
            "recording": session.recording,
            "problem": exc.message,
            "code": exc.code,
        },
    )


async def _verified(svc: Services, session: Session, opened: OpenRecording) -> int | None:
    """The seq of the audit record whose digest the open file matches; Conflict if none."""
    # "Verified" means: the chain holds up to and including the record with the
    # digest (walked now, anchors compared), and the file matches that digest.
    sink = svc.audit.anchors
    anchors = sink.path if sink is not None else None
    held = await asyncio.to_thread(check_digest_record, svc.audit.path, anchors, session.id)
    if not held.ok:
        raise Conflict(held.problem, code="recording_unverified")
    if held.digest != session.recording_sha256:
        raise Conflict(
            f"the session's digest differs from the one in audit record {held.seq}",
            code="recording_altered",
        )
    if await asyncio.to_thread(opened.sha256) != held.digest:
        raise Conflict("the recording does not match its audit digest", code="recording_altered")
    return held.seq


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/sessions", create, methods=["POST"]),
        Route("/api/v1/sessions", listed, methods=["GET"]),
        # or_elsewhere: served by the node running the session (#21, node_routes.py),
        # which knows its invitations (#18): an invitee's page on this node loads
        Route("/api/v1/sessions/{session_id}", or_elsewhere(one, read=True), methods=["GET"]),
        Route("/api/v1/sessions/{session_id}", or_elsewhere(patch), methods=["PATCH"]),
        Route("/api/v1/sessions/{session_id}/end", or_elsewhere(end), methods=["POST"]),
        Route("/api/v1/sessions/{session_id}/recording", recording, methods=["GET"]),
        Route("/api/v1/help-requests", help_requests, methods=["GET"]),
    ]
