"""The fleet and the audit log, as the console shows them.

``GET /api/v1/audit/verify`` walks the chain now and compares the anchored
heads (``vouched_from``: where an anchor file made again begins), and also says
what the broker found at start-up (``startup``, ``started_broken``), what its
full check after that found (``full``), and where heads are anchored
(``anchoring``): docs/audit.md.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.audit.chain import VerifyResult
from allowhelp.broker.audit.integrity import verify_anchored
from allowhelp.broker.console.api.base import require, services
from allowhelp.broker.console.api.node_routes import listed_elsewhere
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import AuditCorrupt, BadRequest, NotFound
from allowhelp.broker.model.agent_version import agent_version_status
from allowhelp.broker.store import AgentRecord, Store

LAST_SEQ = 2**63 - 1  # the audit chain's sequence numbers are SQL int64s

HISTORY_MAX = 200  # events per connectivity answer


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
        # current | outdated (older than this broker) | unsupported (older than
        # MIN_AGENT_VERSION) | unknown (not a version): model/agent_version.py
        "version_status": agent_version_status(agent.version),
        "enrolled": agent.enrolled,
        "last_seen": time.time() if live is not None else agent.last_seen,
        "connected_since": live.connected_since if live else None,
        "removed": agent.removed,
        # Live, from the agent's Hello: a machine service says who is signed in
        # ("" = nobody); a per-user agent's user is the one it runs as.
        "system": live.system if live else False,
        "signed_in": (live.user or None) if live else None,
        # Live, from the Hello: the screen engine the session offers (x11 | wlroots |
        # portal | none; "" = the agent did not say), why not, and the desktop seen.
        "screen": live.screen if live else "",
        "screen_problem": live.screen_problem if live else "",
        "desktop": live.desktop if live else "",
        # Live, from the Hello: the session's monitors a screen request may name.
        "monitors": [m.to_json() for m in live.monitors] if live else [],
        # Live, from the Hello: the agent can show them all at once (``monitor: all``).
        "all_monitors": live.all_monitors if live else False,
    }


async def agents(request: Request) -> Response:
    await require(request)
    svc = services(request)
    rows = [agent_row(svc, agent) for agent in await svc.db.read(Store.agents)]
    elsewhere = await svc.nodes.agents_elsewhere() if svc.nodes is not None else {}
    for row in rows:  # online through another node (#21): sessions are relayed there
        if not row["online"] and row["id"] in elsewhere:
            row.update(listed_elsewhere(elsewhere[str(row["id"])]))
    groups = await svc.db.read(Store.all_groups)
    for row in rows:
        row["groups"] = groups.get(str(row["id"]), [])
    rows.sort(key=lambda row: (not row["online"], str(row["hostname"]).lower()))
    return JSONResponse(rows)


async def remove_agent(request: Request) -> Response:
    """The agent's key is refused from now on, and its live tunnel is dropped."""
    principal = await require(request, admin=True)
    svc = services(request)
    agent_id = request.path_params["agent_id"]
    record = await svc.db.read(Store.agent, agent_id)
    if record is None or record.removed:
        raise NotFound("no such machine")
    await svc.audit.write(
        "agent.removed",
        actor=principal.actor,
        target=agent_id,
        details={"hostname": record.hostname},
    )
    await svc.db.run(Store.remove_agent, agent_id)
    svc.keys.removed(agent_id)  # the tunnel refuses the key from now on (tunnel/keys.py)
    live = svc.registry.get(agent_id)
    if live is not None:  # its tunnel closes, its doorbell stream ends
        live.close()
    removed = await svc.db.read(Store.agent, agent_id) or record
    svc.events.publish({"type": "agent", "agent": agent_row(svc, removed)})
    return JSONResponse({"ok": True})


async def audit_records(request: Request) -> Response:
    await require(request, admin=True)
    try:
        after = int(request.query_params.get("after", "0"))
        limit = min(int(request.query_params.get("limit", "500")), 1000)
    except ValueError as exc:
        raise BadRequest("after and limit must be whole numbers") from exc
    if not 0 <= after <= LAST_SEQ or limit < 1:  # an int64 column: larger is no record
        raise BadRequest(f"after must be from 0 to {LAST_SEQ} and limit >= 1")
    # off the event loop: a PostgreSQL chain's read may wait (up to its deadline)
    records = await asyncio.to_thread(services(request).audit.records, after=after, limit=limit)
    return JSONResponse([record.to_json() for record in records])


async def audit_verify(request: Request) -> Response:
    """Walk the whole chain and the anchors (read-only, off the event loop), and
    say what the start-up and full checks found."""
    await require(request, admin=True)
    audit = services(request).audit
    sink = audit.anchors
    anchor_file = sink.path if sink is not None else None
    anchors_error = ""
    vouched_from: int | None = None
    try:
        try:
            result, checked, vouched_from = await asyncio.to_thread(
                verify_anchored, audit.path, anchor_file
            )
        except OSError as exc:  # the anchor file is unreadable: say so, walk without it
            anchors_error = f"{anchor_file}: {exc.strerror or exc}"
            result, checked, _ = await asyncio.to_thread(verify_anchored, audit.path, None)
    except AuditCorrupt as exc:
        result, checked = VerifyResult(False, 0, 0, 1, str(exc)), 0
    return JSONResponse(
        {
            "ok": result.ok,
            "count": result.count,
            "last_seq": result.last_seq,
            "last_hash": result.last_hash,
            "first_bad_seq": result.first_bad_seq,
            "problem": result.problem,
            "anchors_checked": checked,
            "anchors_error": anchors_error,
            # the anchor file was made again (or went on) here, marked restarted: its
            # heads vouch only from this record on (None: it holds its history)
            "vouched_from": vouched_from,
            "anchoring": sink.state.to_json() if sink is not None else None,
            **audit.integrity.to_json(),
        }
    )


async def connectivity(request: Request) -> Response:
    """One machine's recent connects and disconnects (the bounded history table,
    not the chain), with its last-seen time."""
    await require(request, admin=True)
    svc = services(request)
    agent_id = request.path_params["agent_id"]
    record = await svc.db.read(Store.agent, agent_id)
    if record is None:
        raise NotFound("no such machine")
    try:
        limit = min(int(request.query_params.get("limit", "50")), HISTORY_MAX)
    except ValueError as exc:
        raise BadRequest("limit must be a whole number") from exc
    if limit < 1:
        raise BadRequest("limit must be >= 1")
    row = agent_row(svc, record)
    counts = await svc.db.read(Store.connectivity_counts, agent_id, time.time() - 3600)
    history = await svc.db.read(Store.connectivity, agent_id, limit)
    return JSONResponse(
        {
            "agent_id": agent_id,
            "online": row["online"],
            "last_seen": row["last_seen"],
            "connected_since": row["connected_since"],
            "connects_last_hour": counts["connected"],
            "disconnects_last_hour": counts["disconnected"],
            "history": [event.to_json() for event in history],
        }
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/agents", agents, methods=["GET"]),
        Route("/api/v1/agents/{agent_id}", remove_agent, methods=["DELETE"]),
        Route("/api/v1/agents/{agent_id}/connectivity", connectivity, methods=["GET"]),
        Route("/api/v1/audit", audit_records, methods=["GET"]),
        Route("/api/v1/audit/verify", audit_verify, methods=["GET"]),
    ]
