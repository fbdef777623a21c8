"""Technician accounts and the login policy: admins only.

Every change is audited before it takes effect. A disabled user's web
sessions and live sockets end at once; an admin cannot lock the desk out by
disabling or demoting the last active admin (themselves included).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.auth.authenticator import REQUIRE_TOTP, Principal
from allowhelp.broker.auth.passwords import check_new_password, hash_password
from allowhelp.broker.console.api.base import json_body, require, services
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import BadRequest, Conflict, NotFound
from allowhelp.broker.jobs.policy import (
    LOWERING,
    REQUIRE_APPROVAL,
    Lowering,
    admins_to_agree,
    next_step,
)
from allowhelp.broker.store import ROLES, Role, Store, User, UserSummary

MAX_NAME = 64  # the same rule as `allowhelp-broker user add`
MAX_FULL_NAME = 100


def _check_username(name: object) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_NAME
        or not all(ch.isalnum() or ch in "._-@" for ch in name)
    ):
        raise BadRequest(
            f"a user name is 1 to {MAX_NAME} letters, digits or . _ - @", code="bad_username"
        )
    return name


def _check_role(role: object) -> Role:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", code="bad_role")
    return "admin" if role == "admin" else "technician"


def _user_json(user: UserSummary) -> dict[str, object]:
    return {
        "username": user.username,
        "full_name": user.full_name,
        "role": user.role,
        "disabled": user.disabled,
        "totp": user.totp,
        "created": user.created,
    }


async def _target(svc: Services, username: str) -> User:
    user = await svc.db.read(Store.user_by_name, username)
    if user is None:
        raise NotFound("no such user")
    return user


async def list_users(request: Request) -> Response:
    await require(request, admin=True)
    return JSONResponse([_user_json(u) for u in await services(request).db.read(Store.users)])


async def create_user(request: Request) -> Response:
    principal = await require(request, admin=True)
    body = await json_body(request)
    username = _check_username(body.get("username"))
    role = _check_role(body.get("role", "technician"))
    password, full_name = body.get("password"), body.get("full_name") or username
    if not isinstance(password, str) or not isinstance(full_name, str):
        raise BadRequest("password and full_name must be strings")
    try:
        check_new_password(password)
    except ValueError as exc:
        raise BadRequest(str(exc), code="weak_password") from exc
    svc = services(request)
    if await svc.db.read(Store.user_by_name, username) is not None:
        raise Conflict(f"a user named {username} already exists", code="exists")
    await svc.audit.write(
        "user.created", actor=principal.actor, target=username, details={"role": role}
    )
    hashed = await asyncio.to_thread(hash_password, password)  # argon2id: off the loop
    name = full_name.strip()[:MAX_FULL_NAME] or username
    await svc.db.run(Store.add_user, username, name, role, hashed)  # a twin: Conflict (409)
    summary = await _summary(svc, username)
    return JSONResponse(_user_json(summary), status_code=201)


async def update_user(request: Request) -> Response:
    principal = await require(request, admin=True)
    svc = services(request)
    user = await _target(svc, request.path_params["username"])
    body = await json_body(request)
    disabled, role = body.get("disabled"), body.get("role")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadRequest("disabled must be true or false")
    new_role = _check_role(role) if role is not None else None
    await _keep_an_admin(svc, principal, user, disabled, new_role)
    if disabled is not None and disabled != user.disabled:
        kind = "user.disabled" if disabled else "user.updated"
        await svc.audit.write(
            kind, actor=principal.actor, target=user.username, details={"disabled": disabled}
        )
        await svc.db.run(Store.update_user, user.username, disabled=disabled)
    if new_role is not None and new_role != user.role:
        await svc.audit.write(
            "user.role_changed",
            actor=principal.actor,
            target=user.username,
            details={"from": user.role, "to": new_role},
        )
        await svc.db.run(Store.update_user, user.username, role=new_role)
    if disabled:
        await svc.db.run(Store.drop_web_sessions, user.id)
    svc.events.close_user(user.username)  # reconnects (if still allowed) with the new role
    return JSONResponse(_user_json(await _summary(svc, user.username)))


async def _summary(svc: Services, username: str) -> UserSummary:
    return next(u for u in await svc.db.read(Store.users) if u.username == username)


async def _keep_an_admin(
    svc: Services, principal: Principal, user: User, disabled: object, role: Role | None
) -> None:
    active_admin = user.role == "admin" and not user.disabled
    if not active_admin or not (disabled is True or role == "technician"):
        return
    if user.id == principal.user.id:
        raise Conflict("you cannot disable or demote yourself", code="self")
    if await svc.db.read(Store.count_active_admins) <= 1:
        raise Conflict("this is the last active admin", code="last_admin")


async def reset_totp(request: Request) -> Response:
    principal = await require(request, admin=True)
    svc = services(request)
    user = await _target(svc, request.path_params["username"])
    await svc.audit.write("auth.totp.reset", actor=principal.actor, target=user.username)
    await svc.db.run(Store.reset_totp, user.id)
    return JSONResponse({"ok": True})


async def get_policy(request: Request) -> Response:
    await require(request)
    svc = services(request)
    value = await svc.db.read(Store.policy, REQUIRE_TOTP)
    approval = await svc.db.read(Store.policy, REQUIRE_APPROVAL)
    lowering = Lowering.parse(await svc.db.read(Store.policy, LOWERING))
    standing = lowering is not None and lowering.standing(time.time())
    return JSONResponse(
        {
            "require_totp": value == "1",
            "require_approval": admins_to_agree(approval),
            "lowering_asked_by": lowering.by if lowering is not None and standing else None,
        }
    )


async def set_policy(request: Request) -> Response:
    principal = await require(request, admin=True)
    body = await json_body(request)
    if "require_approval" in body:  # fleet jobs: admins who must agree (broker/jobs/)
        return await _set_approval(request, principal, body)
    wanted = body.get("require_totp")
    if not isinstance(wanted, bool):
        raise BadRequest("require_totp must be true or false")
    svc = services(request)
    await svc.audit.write(
        "auth.policy.changed", actor=principal.actor, details={"require_totp": wanted}
    )
    await svc.db.run(Store.set_policy, REQUIRE_TOTP, "1" if wanted else "0")
    return JSONResponse({"require_totp": wanted})


async def _set_approval(request: Request, principal: Principal, body: dict[str, Any]) -> Response:
    wanted = body.get("require_approval")
    if set(body) != {"require_approval"} or type(wanted) is not int or wanted not in (1, 2):
        raise BadRequest(
            "require_approval must be 1 (the admin who makes a job) or 2 (and a second)"
        )
    svc = services(request)
    now, username = time.time(), principal.user.username
    current = admins_to_agree(await svc.db.read(Store.policy, REQUIRE_APPROVAL))
    lowering = Lowering.parse(await svc.db.read(Store.policy, LOWERING))
    if next_step(current, wanted, lowering, username, now) == "ask":  # a second admin must agree
        await svc.audit.write(
            "auth.policy.asked", actor=principal.actor, details={"require_approval": wanted}
        )
        await svc.db.run(Store.set_policy, LOWERING, Lowering(username, now).to_text())
        answer = {"require_approval": current, "lowering_asked_by": username}
        return JSONResponse(answer, status_code=202)
    details: dict[str, object] = {"require_approval": wanted}
    if wanted < current and lowering is not None:
        details["asked_by"] = lowering.by
    await svc.audit.write("auth.policy.changed", actor=principal.actor, details=details)
    await svc.db.run(Store.set_policy, REQUIRE_APPROVAL, str(wanted))
    await svc.db.run(Store.set_policy, LOWERING, "")  # a request standing is answered or moot
    return JSONResponse({"require_approval": wanted})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/users", list_users, methods=["GET"]),
        Route("/api/v1/users", create_user, methods=["POST"]),
        Route("/api/v1/users/{username}", update_user, methods=["PATCH"]),
        Route("/api/v1/users/{username}/reset-totp", reset_totp, methods=["POST"]),
        Route("/api/v1/policy", get_policy, methods=["GET"]),
        Route("/api/v1/policy", set_policy, methods=["PUT"]),
    ]
