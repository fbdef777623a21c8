"""The web wall aimed at live sessions, tried from outside.

Each session WebSocket (terminal, screen) is tried on an *active* session its
owner then opens, so nothing but the rule under test can refuse an attempt:
every missing, ``null`` or foreign Origin is refused, and so is every other
login (another technician, an admin) that carries the right Origin. The owner's
own socket, opened last, proves the session was open to be taken. Real broker
and agent processes; the agent's screen is tests/fake_vnc.py (its greeting is
all the owner's check needs).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.broker.console.api.base import websocket_principal
from allowhelp.broker.errors import Unauthenticated
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    running_fleet,
    wait_pending,
)
from screenkit import FAKE_VNC
from wallkit import COOKIE, ws_connect

TECH_B, TECH_B_PW = "bob", "bob password 1234"
ROUTES = {"shell": "terminal", "screen": "screen"}
GREETING = {"shell": b"ready-42", "screen": b"RFB 003.008\n"}


def foreign_origins(url: str) -> list[str | None]:
    """Everything but the exact public URL: none at all, null, look-alikes."""
    host = url.removeprefix("https://")
    return [
        None,
        "null",
        "https://evil.example",
        url + ".evil.example",
        "https://evil.example/" + host,
        url.replace("https://", "http://"),
        url + "/",
        url.replace("localhost", "127.0.0.1"),
        host,
        "wss://" + host,
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    root = tmp_path_factory.mktemp("wall-live")
    mode = root / "fake-mode"
    mode.write_text("hostile")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env[TEST_COMMAND_ENV] = f"{sys.executable} {FAKE_VNC} {mode}"
    agent_args = ("--reconnect-cap", "2", "--prompt", "none")
    with running_fleet(root, agent_args=agent_args, agent_env=env) as (_, broker, agent):
        broker.add_user(TECH_B, TECH_B_PW)
        yield broker, agent


@pytest.fixture
def alice(world: tuple[Broker, Agent]) -> Iterator[Desk]:
    desk = Desk.login(world[0], TECH, TECH_PW)
    yield desk
    desk.close()


def active(desk: Desk, agent: Agent, kind: str) -> str:
    made = desk.request(agent.agent_id, kind=kind, reason="wall test")
    assert made.status_code == 201, made.text
    session_id = str(made.json()["id"])
    wait_pending(agent, session_id)
    assert agent_call(agent, "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    return session_id


def attempt(broker: Broker, path: str, origin: str | None, cookie: str | None) -> int:
    """The HTTP status of the upgrade: 101 when the socket opened (then closed at once)."""

    async def go() -> int:
        try:
            ws = await ws_connect(broker, path, origin=origin, cookie=cookie)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    return asyncio.run(go())


def owner_opens(desk: Desk, session_id: str, kind: str) -> bytes:
    """The owner's socket, with the exact Origin: what the PC sent first."""

    async def go() -> bytes:
        path = f"/api/v1/sessions/{session_id}/{ROUTES[kind]}"
        cookie = desk.client.cookies[COOKIE]
        ws = await ws_connect(desk.broker, path, origin=desk.broker.url, cookie=cookie)
        async with ws:
            if kind == "shell":
                await ws.send(b"echo ready-$((40+2))\n")
            seen = b""
            while GREETING[kind] not in seen:
                frame = await asyncio.wait_for(ws.recv(), 15)
                assert isinstance(frame, bytes)
                seen += frame
            return seen

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["shell", "screen"])
def test_each_session_socket_refuses_every_foreign_origin_on_a_live_session(
    world: tuple[Broker, Agent], alice: Desk, kind: str
) -> None:
    broker, agent = world
    session_id = active(alice, agent, kind)
    path = f"/api/v1/sessions/{session_id}/{ROUTES[kind]}"
    cookie = alice.client.cookies[COOKIE]
    for origin in foreign_origins(broker.url):
        assert attempt(broker, path, origin, cookie) == 403, (path, origin)
    # Right Origin, but no login, or a forged one.
    assert attempt(broker, path, broker.url, None) == 403
    assert attempt(broker, path, broker.url, "forged-cookie-value") == 403
    # None of that touched the session: it is still active and its owner opens it.
    assert alice.session(session_id)["state"] == "active"
    assert GREETING[kind] in owner_opens(alice, session_id, kind)
    assert alice.wait_state(session_id, "ended")["end_reason"] == "technician"


@pytest.mark.parametrize("kind", ["shell", "screen"])
def test_another_login_is_refused_on_an_active_session_by_ownership_alone(
    world: tuple[Broker, Agent], alice: Desk, kind: str
) -> None:
    broker, agent = world
    session_id = active(alice, agent, kind)
    path = f"/api/v1/sessions/{session_id}/{ROUTES[kind]}"
    for user, password in ((TECH_B, TECH_B_PW), (ADMIN, ADMIN_PW)):
        # A live login, the exact Origin, an active session of the right kind with
        # the machine online and no socket open yet: only ownership is left to refuse.
        other = Desk.login(broker, user, password)
        try:
            assert attempt(broker, path, broker.url, other.client.cookies[COOKIE]) == 403, user
        finally:
            other.close()
    assert alice.session(session_id)["state"] == "active"
    assert GREETING[kind] in owner_opens(alice, session_id, kind)
    assert alice.wait_state(session_id, "ended")["end_reason"] == "technician"


PUBLIC = "https://help.example.org:8443"


async def endpoint_check(origin: str | None) -> object:
    """``websocket_principal`` on its own, without the wall in front: what every
    WebSocket endpoint calls first. A stub broker knows one live cookie."""
    principal = SimpleNamespace(must_enrol_totp=False)

    async def principal_of(cookie: str | None) -> object:
        return principal if cookie == "live" else None

    svc = SimpleNamespace(public_url=PUBLIC, auth=SimpleNamespace(principal=principal_of))
    headers = [(b"cookie", f"{COOKIE}=live".encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {
        "type": "websocket",
        "path": "/api/v1/events",
        "headers": headers,
        "app": SimpleNamespace(state=SimpleNamespace(services=svc)),
    }

    async def receive() -> dict[str, object]:
        raise AssertionError("nothing is read")

    async def send(message: object) -> None:
        raise AssertionError("nothing is sent")

    found: object = await websocket_principal(WebSocket(scope, receive, send))
    assert found is principal
    return found


@pytest.mark.parametrize("origin", [o for o in foreign_origins(PUBLIC) if o != PUBLIC])
async def test_the_endpoints_refuse_a_foreign_origin_even_without_the_wall(
    origin: str | None,
) -> None:
    """The wall checks the Origin first; the endpoints check again, so that none
    depends on the middleware's order. This is the second check, alone."""
    with pytest.raises(Unauthenticated):
        await endpoint_check(origin)


async def test_the_endpoints_take_the_exact_origin() -> None:
    await endpoint_check(PUBLIC)
