"""Login, logout and who-am-I."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.auth.authenticator import (
    COOKIE_NAME,
    REQUIRE_TOTP,
    Principal,
    token_hash,
)
from allowhelp.broker.console.api.base import (
    json_body,
    remote_of,
    require,
    services,
)
from allowhelp.broker.errors import BadRequest, StoreError
from allowhelp.broker.store import Store

log = logging.getLogger(__name__)


async def login(request: Request) -> Response:
    body = await json_body(request)
    username, password = body.get("username"), body.get("password")
    code = body.get("totp")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("username and password are required strings")
    if code is not None and not isinstance(code, str):
        raise BadRequest("totp must be a string")
    svc = services(request)
    result = await svc.auth.login(username, password, remote_of(request), code or None)
    await _forget_old_session(request)
    response = JSONResponse(
        {
            "csrf_token": result.csrf_token,
            "user": {
                "username": result.user.username,
                "full_name": result.user.full_name,
                "role": result.user.role,
            },
        }
    )
    response.set_cookie(
        COOKIE_NAME,
        result.cookie_value,
        max_age=int(result.expires - time.time()),
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


async def _forget_old_session(request: Request) -> None:
    """Rotation: the cookie the browser had before this login stops working."""
    old = request.cookies.get(COOKIE_NAME)
    if old and len(old) <= 100:
        svc = services(request)
        svc.events.close_web_session(token_hash(old))
        try:
            await svc.db.run(Store.delete_web_session, token_hash(old))
        except StoreError as exc:  # the new login stands; the old cookie expires as set
            log.warning("the web session replaced by a login was not deleted: %s", exc)


async def logout(request: Request) -> Response:
    principal = await require(request, enrolling=True)
    svc = services(request)
    await svc.auth.logout(principal, remote_of(request))
    svc.events.close_web_session(principal.session.token_hash)
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def me_json(request: Request, principal: Principal) -> dict[str, object]:
    user = principal.user
    required = await services(request).db.read(Store.policy, REQUIRE_TOTP)
    return {
        "username": user.username,
        "full_name": user.full_name,
        "role": user.role,
        "totp_enrolled": principal.totp_enrolled,
        "must_enrol_totp": principal.must_enrol_totp,
        "require_totp": required == "1",
        # Same-origin pages (a session page opened in a new tab) read it here;
        # other sites cannot read this answer, so it stays a secret to them.
        "csrf_token": principal.session.csrf_token,
    }


async def me(request: Request) -> Response:
    return JSONResponse(await me_json(request, await require(request, enrolling=True)))


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/login", login, methods=["POST"]),
        Route("/api/v1/logout", logout, methods=["POST"]),
        Route("/api/v1/me", me, methods=["GET"]),
    ]
