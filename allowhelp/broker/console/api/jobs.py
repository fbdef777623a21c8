"""Fleet jobs and machine groups over HTTP: admins only (technicians get 403).

The work is in ``broker/jobs/desk.py``; this keeps only what is HTTP. A job's
script and every PC's output are hostile text to the console: it shows them
with ``textContent`` only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.errors import BadRequest, NotFound
from allowhelp.broker.jobs.orders import is_group_name
from allowhelp.broker.store import Store

MAX_GROUPS = 20


async def create_job(request: Request) -> Response:
    principal = await require(request, admin=True)
    svc = services(request)
    job = await svc.jobs.create(principal.actor, principal.user.username, await json_body(request))
    return JSONResponse(await svc.jobs.view(job.id), status_code=201)


async def list_jobs(request: Request) -> Response:
    await require(request, admin=True)
    return JSONResponse(await services(request).jobs.listing())


async def get_job(request: Request) -> Response:
    await require(request, admin=True)
    return JSONResponse(await services(request).jobs.view(request.path_params["job_id"]))


async def approve_job(request: Request) -> Response:
    principal = await require(request, admin=True)
    svc = services(request)
    job = await svc.jobs.approve(
        principal.actor, principal.user.username, request.path_params["job_id"]
    )
    return JSONResponse(await svc.jobs.view(job.id))


async def cancel_job(request: Request) -> Response:
    principal = await require(request, admin=True)
    svc = services(request)
    job = await svc.jobs.cancel(principal.actor, request.path_params["job_id"])
    return JSONResponse(await svc.jobs.view(job.id))


async def set_groups(request: Request) -> Response:
    """``PATCH /agents/{id} {"groups": [...]}``: the machine's groups, replaced."""
    principal = await require(request, admin=True)
    svc = services(request)
    agent_id = request.path_params["agent_id"]
    body = await json_body(request)
    if set(body) != {"groups"}:
        raise BadRequest('send {"groups": [NAME, ...]}')
    groups = body["groups"]
    if (
        not isinstance(groups, list)
        or len(groups) > MAX_GROUPS
        or not all(is_group_name(name) for name in groups)
    ):
        raise BadRequest(
            f"groups must be at most {MAX_GROUPS} names of 1 to 64 letters, digits, "
            "spaces, dots, dashes or underscores"
        )
    record = await svc.db.read(Store.agent, agent_id)
    if record is None or record.removed:
        raise NotFound("no such machine")
    names = sorted(set(groups))
    await svc.audit.write(
        "agent.groups_changed",
        actor=principal.actor,
        target=agent_id,
        details={"hostname": record.hostname, "groups": names},
    )
    await svc.db.run(Store.set_groups, agent_id, names)
    return JSONResponse({"id": agent_id, "groups": names})


async def machine_details(request: Request) -> Response:
    """``GET /agents/{id}/inventory``: groups and what the machine service reported."""
    await require(request)
    svc = services(request)
    agent_id = request.path_params["agent_id"]
    record = await svc.db.read(Store.agent, agent_id)
    if record is None:
        raise NotFound("no such machine")
    groups = (await svc.db.read(Store.all_groups)).get(agent_id, [])
    found = await svc.db.read(Store.inventory, agent_id)
    inventory, updated = found if found is not None else ({}, None)
    return JSONResponse(
        {"id": agent_id, "groups": groups, "inventory": inventory, "updated": updated}
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/jobs", create_job, methods=["POST"]),
        Route("/api/v1/jobs", list_jobs, methods=["GET"]),
        Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/v1/jobs/{job_id}/approve", approve_job, methods=["POST"]),
        Route("/api/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/v1/agents/{agent_id}", set_groups, methods=["PATCH"]),
        Route("/api/v1/agents/{agent_id}/inventory", machine_details, methods=["GET"]),
    ]
