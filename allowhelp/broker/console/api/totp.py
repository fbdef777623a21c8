"""Two-factor login: a technician enrols an authenticator app (RFC 6238 TOTP).

Setup makes a pending secret and shows it as a QR code; it becomes active only
once a code from the app proves the phone has it. That code's time step is
then used up, and ten recovery codes are shown once (only hashes are kept).

The QR code (made by segno) reaches the page as an SVG in a base64 ``data:``
URL that the page sets as an image's ``src``: no inline markup, no script, and
the CSP's ``img-src 'self' data:`` allows it.
"""

from __future__ import annotations

import base64
import io
import logging

import segno
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.auth import totp
from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.errors import BadRequest, Conflict
from allowhelp.broker.store import Store

log = logging.getLogger(__name__)

ISSUER = "allowhelp"
QR_BORDER = 4  # modules of white around the code: the quiet zone ISO/IEC 18004 asks for


def qr_data_url(text: str) -> str:
    """``text`` as a QR code (level M or better): black on white SVG, base64 data URL.

    Raises ``ValueError`` (segno's ``DataOverflowError``) when no QR code holds it.
    """
    code = segno.make_qr(text, error="m")
    svg = io.BytesIO()
    code.save(
        svg, kind="svg", border=QR_BORDER, xmldecl=False, omitsize=True, dark="#000", light="#fff"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.getvalue()).decode()


async def status(request: Request) -> Response:
    principal = await require(request, enrolling=True)
    db = services(request).db
    state = await db.read(Store.totp, principal.user.id)
    left = await db.read(Store.recovery_codes_left, principal.user.id)
    return JSONResponse(
        {
            "enrolled": state.secret is not None,
            "pending": state.pending is not None and state.secret is None,
            "recovery_codes_left": left,
        }
    )


async def setup(request: Request) -> Response:
    principal = await require(request, enrolling=True)
    db = services(request).db
    if (await db.read(Store.totp, principal.user.id)).secret is not None:
        raise Conflict("TOTP is set up already; an admin can reset it", code="totp_enrolled")
    secret = totp.new_secret()
    await db.run(Store.set_totp_pending, principal.user.id, secret)
    uri = totp.provisioning_uri(secret, principal.user.username, ISSUER)
    try:
        image: str | None = qr_data_url(uri)
    except ValueError:
        log.warning("no QR code for user %s: the URI is too long", principal.user.username)
        image = None
    return JSONResponse({"secret": secret, "uri": uri, "qr": image})


async def confirm(request: Request) -> Response:
    principal = await require(request, enrolling=True)
    code = (await json_body(request)).get("code")
    if not isinstance(code, str):
        raise BadRequest("code must be the 6 digits the app shows")
    svc = services(request)
    user = principal.user
    state = await svc.db.read(Store.totp, user.id)
    if state.secret is not None:
        raise Conflict("TOTP is set up already", code="totp_enrolled")
    if state.pending is None:
        raise Conflict("start the setup first", code="no_setup")
    step = totp.matching_step(state.pending, code)
    if step is None:
        raise BadRequest("wrong code: check the phone's clock and try again", code="invalid_totp")
    codes = totp.new_recovery_codes()
    await svc.audit.write(
        "auth.totp.enrolled", actor=principal.actor, target=user.username, details={}
    )
    hashes = [totp.recovery_hash(c) for c in codes]
    if not await svc.db.run(Store.activate_totp, user.id, state.pending, step, hashes):
        raise Conflict("the setup changed meanwhile: start again", code="no_setup")
    return JSONResponse({"recovery_codes": codes})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/totp", status, methods=["GET"]),
        Route("/api/v1/totp/setup", setup, methods=["POST"]),
        Route("/api/v1/totp/confirm", confirm, methods=["POST"]),
    ]
