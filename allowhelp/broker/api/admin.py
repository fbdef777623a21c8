"""The fleet and the audit log, as the console shows them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .base import ApiError, api, require, services


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


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/agents", agents, methods=["GET"]),
        Route("/api/v1/audit", audit_records, methods=["GET"]),
    ]
