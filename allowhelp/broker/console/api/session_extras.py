"""A session's files and chat over HTTP, and the session reports' outbox for admins.

Files (``sessions/files.py``): the listing and a download stream out as they
come from the PC; an upload streams in (the request body, never whole in
memory; exempt from the Wall's 64 KiB JSON cap, bounded by the file limit: a
Content-Length over it is a 413 before anything is recorded or sent to the PC).
Chat (``sessions/chat.py``): the technician's messages out, the transcript in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.console.api.node_routes import or_elsewhere
from allowhelp.broker.errors import NotFound
from allowhelp.broker.sessions.chat import visible_session
from allowhelp.broker.sessions.filepaths import path_from_query
from allowhelp.broker.store import Store
from allowhelp.protocol.text import ascii_digits

UPLOAD_PATH = "/api/v1/sessions/{session_id}/files/content"


async def listing(request: Request) -> Response:
    principal = await require(request)
    path = path_from_query(request.scope.get("query_string", b""), default=".")
    body = await services(request).files.listing(
        request.path_params["session_id"], principal.user.username, path
    )
    return StreamingResponse(body, media_type="application/json")


async def download(request: Request) -> Response:
    principal = await require(request)
    path = path_from_query(request.scope.get("query_string", b""))
    size, chunks = await services(request).files.download(
        request.path_params["session_id"], principal.user.username, path
    )
    name = path.rstrip("/").rsplit("/", 1)[-1]
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
    }
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


async def upload(request: Request) -> Response:
    principal = await require(request)  # CSRF checked here, before a byte is read
    path = path_from_query(request.scope.get("query_string", b""))
    declared = request.headers.get("content-length")  # digits only: the Wall checked
    result = await services(request).files.upload(
        request.path_params["session_id"],
        principal.user.username,
        path,
        _body(request),
        declared=int(declared) if declared is not None and ascii_digits(declared) else None,
    )
    return JSONResponse(result, status_code=201)


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def messages(request: Request) -> Response:
    principal = await require(request)
    svc = services(request)
    found = await svc.sessions.get(request.path_params["session_id"])
    session = visible_session(found, principal.user.username, principal.user.role == "admin")
    return JSONResponse([line.to_json() for line in await svc.chat.transcript(session)])


async def post_message(request: Request) -> Response:
    principal = await require(request)
    body = await json_body(request)
    svc = services(request)
    session = svc.sessions.live(request.path_params["session_id"])
    if session is None or session.technician != principal.user.username:
        raise NotFound("no such session, or it is over")
    line = await svc.chat.from_technician(session, principal.user.full_name, body.get("text"))
    return JSONResponse(line.to_json(), status_code=201)


async def reports(request: Request) -> Response:
    """Admins: the session reports owed to the ticket system, undelivered first."""
    await require(request, admin=True)
    items = await services(request).db.read(Store.reports)
    return JSONResponse([item.to_json() for item in items])


def routes() -> list[BaseRoute]:
    return [
        # or_elsewhere: served by the node running the session (#21, node_routes.py)
        Route("/api/v1/sessions/{session_id}/files", or_elsewhere(listing), methods=["GET"]),
        Route(UPLOAD_PATH, or_elsewhere(download), methods=["GET"]),
        Route(UPLOAD_PATH, or_elsewhere(upload), methods=["PUT"]),
        Route("/api/v1/sessions/{session_id}/messages", or_elsewhere(messages), methods=["GET"]),
        Route(
            "/api/v1/sessions/{session_id}/messages", or_elsewhere(post_message), methods=["POST"]
        ),
        Route("/api/v1/reports", reports, methods=["GET"]),
    ]
