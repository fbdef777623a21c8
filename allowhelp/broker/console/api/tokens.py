"""Enrolment tokens from the console: admins create, list and revoke them.

A token's secret is shown once, with the command to paste on the PC; the
broker keeps only its hash, and lists tokens by the hash's first 12 hex
digits, the same id the audit log uses.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.errors import BadRequest, NotFound
from allowhelp.broker.store import Store, TokenSummary
from allowhelp.broker.tunnel.enrolment import EnrolmentDesk, parse_ttl
from allowhelp.certs.pki import ca_fingerprint
from allowhelp.certs.token import secret_hash


def _token_json(token: TokenSummary, now: float) -> dict[str, object]:
    state = (
        "revoked"
        if token.revoked is not None
        else "used"
        if token.uses_left <= 0
        else "expired"
        if token.expires < now
        else "active"
    )
    return {
        "id": token.id,
        "created": token.created,
        "expires": token.expires,
        "uses_left": token.uses_left,
        "created_by": token.created_by,
        "revoked": token.revoked,
        "state": state,
    }


async def list_tokens(request: Request) -> Response:
    await require(request, admin=True)
    now = time.time()
    tokens = await services(request).db.read(Store.enrol_tokens)
    return JSONResponse([_token_json(t, now) for t in tokens])


async def create_token(request: Request) -> Response:
    principal = await require(request, admin=True)
    body = await json_body(request)
    ttl, uses = body.get("ttl", "1h"), body.get("uses", 1)
    if not isinstance(ttl, str) or not isinstance(uses, int) or isinstance(uses, bool):
        raise BadRequest("ttl is a text like 1h or 7d, uses a whole number")
    svc = services(request)
    try:
        seconds = parse_ttl(ttl)
        token = await EnrolmentDesk.issue_token(
            svc.db,
            svc.audit,
            url=svc.public_url,
            ca_fingerprint=ca_fingerprint(svc.ca_pem),
            ttl=seconds,
            uses=uses,
            actor=principal.actor,
        )
    except ValueError as exc:
        raise BadRequest(str(exc).replace("--", ""), code="bad_token_request") from exc
    text = token.encode()
    return JSONResponse(
        {
            "id": secret_hash(token.secret)[:12],
            "token": text,
            "command": f"allowhelp-agent enroll {text}",
            "expires": time.time() + seconds,
            "uses": uses,
        },
        status_code=201,
    )


async def revoke_token(request: Request) -> Response:
    principal = await require(request, admin=True)
    token_id = request.path_params["token_id"]
    svc = services(request)
    tokens = await svc.db.read(Store.enrol_tokens)
    if not any(t.id == token_id and t.revoked is None for t in tokens):
        raise NotFound("no such token, or it is revoked already")
    await svc.audit.write("token.revoked", actor=principal.actor, target=token_id)
    await svc.db.run(Store.revoke_enrol_token, token_id, time.time())
    return JSONResponse({"ok": True})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/tokens", list_tokens, methods=["GET"]),
        Route("/api/v1/tokens", create_token, methods=["POST"]),
        Route("/api/v1/tokens/{token_id}/revoke", revoke_token, methods=["POST"]),
    ]
