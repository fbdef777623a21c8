"""The fleet and the audit log, as the console shows them."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..audit import verify
from ..services import Services
from ..store import AgentRecord
from .base import ApiError, api, require, services

AUDIT_FILE = "audit.sqlite3"  # server.AUDIT_FILE (imported there from here would be a cycle)


def agent_row(svc: Services, agent: AgentRecord) -> dict[str, object]:
    """One machine as the console lists it; the text fields are the agent's words."""
    live = svc.registry.get(agent.id)
    return {
        "id": agent.id,
        "hostname": agent.hostname,
        "online": live is not None,
        "os": agent.os,
        "user": agent.username,
        "version": agent.version,
        "enrolled": agent.enrolled,
        "last_seen": time.time() if live is not None else agent.last_seen,
        "connected_since": live.connected_since if live else None,
        "removed": agent.removed,
    }


@api
async def agents(request: Request) -> Response:
    require(request)
    svc = services(request)
    rows = [agent_row(svc, agent) for agent in svc.store.agents()]
    rows.sort(key=lambda row: (not row["online"], str(row["hostname"]).lower()))
    return JSONResponse(rows)


@api
async def remove_agent(request: Request) -> Response:
    """The agent's key is refused from now on, and its live tunnel is dropped."""
    principal = require(request, admin=True)
    svc = services(request)
    agent_id = request.path_params["agent_id"]
    record = svc.store.agent(agent_id)
    if record is None or record.removed:
        raise ApiError(404, "not_found", "no such machine")
    await svc.audit.write(
        "agent.removed",
        actor=principal.actor,
        target=agent_id,
        details={"hostname": record.hostname},
    )
    svc.store.remove_agent(agent_id)
    live = svc.registry.get(agent_id)
    if live is not None:
        live.link.close()
    removed = svc.store.agent(agent_id) or record
    svc.events.publish({"type": "agent", "agent": agent_row(svc, removed)})
    return JSONResponse({"ok": True})


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
async def audit_verify(request: Request) -> Response:
    """Walk the whole chain (read-only, off the event loop) and say whether it holds."""
    require(request, admin=True)
    svc = services(request)
    result = await asyncio.to_thread(verify, svc.settings.data_dir / AUDIT_FILE)
    return JSONResponse(
        {
            "ok": result.ok,
            "count": result.count,
            "last_seq": result.last_seq,
            "last_hash": result.last_hash,
            "first_bad_seq": result.first_bad_seq,
            "problem": result.problem,
        }
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/agents", agents, methods=["GET"]),
        Route("/api/v1/agents/{agent_id}", remove_agent, methods=["DELETE"]),
        Route("/api/v1/audit", audit_records, methods=["GET"]),
        Route("/api/v1/audit/verify", audit_verify, methods=["GET"]),
    ]
