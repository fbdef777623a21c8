"""Two-factor login: a technician enrols an authenticator app (RFC 6238 TOTP).

Setup makes a pending secret and shows it as a QR code; it becomes active only
once a code from the app proves the phone has it. That code's time step is
then used up, and ten recovery codes are shown once (only hashes are kept).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import qr, totp
from .base import ApiError, api, json_body, require, services

log = logging.getLogger(__name__)

ISSUER = "allowhelp"


@api
async def status(request: Request) -> Response:
    principal = require(request, enrolling=True)
    store = services(request).store
    state = store.totp(principal.user.id)
    return JSONResponse(
        {
            "enrolled": state.secret is not None,
            "pending": state.pending is not None and state.secret is None,
            "recovery_codes_left": store.recovery_codes_left(principal.user.id),
        }
    )


@api
async def setup(request: Request) -> Response:
    principal = require(request, enrolling=True)
    store = services(request).store
    if store.totp(principal.user.id).secret is not None:
        raise ApiError(409, "totp_enrolled", "TOTP is set up already; an admin can reset it")
    secret = totp.new_secret()
    store.set_totp_pending(principal.user.id, secret)
    uri = totp.provisioning_uri(secret, principal.user.username, ISSUER)
    try:
        image: str | None = qr.svg_data_url(uri)
    except ValueError:
        log.warning("no QR code for user %s: the URI is too long", principal.user.username)
        image = None
    return JSONResponse({"secret": secret, "uri": uri, "qr": image})


@api
async def confirm(request: Request) -> Response:
    principal = require(request, enrolling=True)
    code = (await json_body(request)).get("code")
    if not isinstance(code, str):
        raise ApiError(400, "bad_request", "code must be the 6 digits the app shows")
    svc = services(request)
    user = principal.user
    state = svc.store.totp(user.id)
    if state.secret is not None:
        raise ApiError(409, "totp_enrolled", "TOTP is set up already")
    if state.pending is None:
        raise ApiError(409, "no_setup", "start the setup first")
    step = totp.matching_step(state.pending, code)
    if step is None:
        raise ApiError(400, "invalid_totp", "wrong code: check the phone's clock and try again")
    codes = totp.new_recovery_codes()
    await svc.audit.write(
        "auth.totp.enrolled", actor=principal.actor, target=user.username, details={}
    )
    hashes = [totp.recovery_hash(c) for c in codes]
    if not svc.store.activate_totp(user.id, state.pending, step, hashes):
        raise ApiError(409, "no_setup", "the setup changed meanwhile: start again")
    return JSONResponse({"recovery_codes": codes})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/totp", status, methods=["GET"]),
        Route("/api/v1/totp/setup", setup, methods=["POST"]),
        Route("/api/v1/totp/confirm", confirm, methods=["POST"]),
    ]
