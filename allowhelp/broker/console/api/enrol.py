"""Enrolment: called by agents with a token, never by browsers (no cookie, no CSRF)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.console.api.base import json_body, remote_of, services


async def enrol_ca(request: Request) -> Response:
    return PlainTextResponse(services(request).ca_pem, media_type="application/x-pem-file")


async def enrol(request: Request) -> Response:
    body = await json_body(request)
    reply = await services(request).enrolment.enrol(body, remote_of(request))
    return JSONResponse(reply.to_json(), status_code=201)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/enrol/ca", enrol_ca, methods=["GET"]),
        Route("/api/v1/enrol", enrol, methods=["POST"]),
    ]
