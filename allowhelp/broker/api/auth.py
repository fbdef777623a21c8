"""Login, logout and who-am-I."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..auth import COOKIE_NAME
from .base import ApiError, api, json_body, remote_of, require, services


@api
async def login(request: Request) -> Response:
    body = await json_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "bad_request", "username and password are required strings")
    svc = services(request)
    result = await svc.auth.login(username, password, remote_of(request))
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


@api
async def logout(request: Request) -> Response:
    principal = require(request)
    await services(request).auth.logout(principal, remote_of(request))
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
    return response


@api
async def me(request: Request) -> Response:
    user = require(request).user
    return JSONResponse({"username": user.username, "full_name": user.full_name, "role": user.role})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/login", login, methods=["POST"]),
        Route("/api/v1/logout", logout, methods=["POST"]),
        Route("/api/v1/me", me, methods=["GET"]),
    ]
