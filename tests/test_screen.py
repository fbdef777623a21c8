"""The screen through a real broker and real agents: Xvfb, x11vnc, a Python RFB client.

One private Xvfb (on a display number it picks) with an ``xev`` window that
logs every key it gets; three agents on one broker: one on that display, one
started without DISPLAY, one whose "x11vnc" is a hostile fake (tests/fake_vnc.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from allowhelp.agent.screen import TEST_COMMAND_ENV
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    online,
    wait_for,
    wait_pending,
)
from screenkit import (
    FAKE_VNC,
    PYTHON_NAME,
    SCREEN_SIZE,
    RfbClient,
    XServer,
    command_line,
    gone,
    key_event,
    listening_inodes,
    on_pc,
    pointer_event,
    processes,
    screen_socket,
    socket_inodes,
    start_xserver,
    variance,
)

KEYSYM_A, KEYSYM_Z = 0x61, 0x7A
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", TEST_COMMAND_ENV)


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
    return {**env, **extra}


def start_agent(fleet: Fleet, broker: Broker, name: str, env: dict[str, str]) -> Agent:
    agent = fleet.agent(name)
    assert agent.enroll(broker.token()).returncode == 0
    agent.start("--reconnect-cap", "2", "--prompt", "none", env=env)
    return agent


@pytest.fixture(scope="module")
def xserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XServer]:
    server = start_xserver(tmp_path_factory.mktemp("xvfb"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, xserver: XServer) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("screen")
    fleet = Fleet(root)
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        mode = root / "fake-mode"
        mode.write_text("hostile")
        agents = {
            "x": start_agent(fleet, broker, "x", agent_env(DISPLAY=xserver.display)),
            "headless": start_agent(fleet, broker, "headless", agent_env()),
            "fake": start_agent(
                fleet,
                broker,
                "fake",
                agent_env(**{TEST_COMMAND_ENV: f"{sys.executable} {FAKE_VNC} {mode}"}),
            ),
        }
        for agent in agents.values():
            wait_for(lambda a=agent: online(broker, a.agent_id), 20, "agent online")
        yield {"broker": broker, "fleet": fleet, "mode": mode, "xserver": xserver, **agents}
    finally:
        fleet.close()


@pytest.fixture
def desk(world: dict[str, Any]) -> Iterator[Desk]:
    desk = Desk.login(world["broker"], TECH, TECH_PW)
    yield desk
    desk.close()


def consented(desk: Desk, agent: Agent, *, view_only: bool = False) -> str:
    answer = desk.request(agent.agent_id, kind="screen", reason="screen test")
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    wait_pending(agent, session_id)
    done = on_pc(agent, "allow", session_id, *(["--view-only"] if view_only else []))
    assert done.returncode == 0, done.stderr
    assert desk.wait_state(session_id, "active")["view_only"] is view_only
    return session_id


def audit(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r["target"] == session_id]


def x11vnc_of(xserver: XServer) -> list[int]:
    return wait_for(lambda: processes(xserver.display), 10, "x11vnc to run")  # type: ignore[no-any-return]


async def closed_by_broker(ws: Any, timeout: float = 10) -> websockets.ConnectionClosed:
    with pytest.raises(websockets.ConnectionClosed) as caught:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return caught.value


@pytest.mark.x11
def test_screen_shows_the_display_and_takes_keys_under_control(
    world: dict[str, Any], desk: Desk
) -> None:
    xserver: XServer = world["xserver"]
    session_id = consented(desk, world["x"])

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            assert ws.subprotocol == "binary"
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # no deflate
            client = RfbClient(ws)
            init = await client.handshake()
            assert init.security_types == b"\x01"
            assert (init.width, init.height) == SCREEN_SIZE
            await client.request_raw(init)
            rects = await client.framebuffer_update(init)
            assert sum(w * h for _, _, w, h, _ in rects) == init.width * init.height
            assert max(variance(pixels, init.bpp) for *_, pixels in rects) > 1, "blank screen"
            pids = x11vnc_of(xserver)
            assert len(pids) == 1 and "-viewonly" not in command_line(pids[0])
            assert "-inetd" in command_line(pids[0])
            assert not socket_inodes(pids[0]) & listening_inodes(), "x11vnc listens on TCP"
            ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True)
            assert "x11vnc" not in ss.stdout
            xserver.focus_window()
            await client.send(key_event(KEYSYM_A, True) + key_event(KEYSYM_A, False))
            await asyncio.to_thread(
                wait_for, lambda: "keysym 0x61, a)" in xserver.keys_seen(), 10, "the key"
            )
            return pids

    pids = asyncio.run(scenario())  # leaving the block closes the socket: the technician left
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 10, "x11vnc to be gone after the technician left")
    started = next(r for r in audit(world["broker"], session_id) if r["type"] == "session.started")
    assert started["details"]["view_only"] is False


@pytest.mark.x11
def test_view_only_keys_do_not_reach_the_display(world: dict[str, Any], desk: Desk) -> None:
    xserver: XServer = world["xserver"]
    session_id = consented(desk, world["x"], view_only=True)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            pids = x11vnc_of(xserver)
            assert {"-viewonly", "-nosel"} <= set(command_line(pids[0]))
            xserver.focus_window()
            cut = b"\x06\0\0\0" + (5).to_bytes(4, "big") + b"hello"
            await client.send(key_event(KEYSYM_Z, True))
            await client.send(key_event(KEYSYM_Z, False) + pointer_event(1, 300, 300) + cut)
            # The stream goes on after the dropped events: ask for a picture.
            await client.request_raw(init)
            assert await client.framebuffer_update(init)
            await asyncio.sleep(1.0)
            assert "keysym 0x7a" not in xserver.keys_seen(), "a view-only key reached the PC"
            ended = await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
            assert ended.status_code == 200
            closed = await closed_by_broker(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1000
            return pids

    pids = asyncio.run(scenario())
    assert desk.session(session_id)["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 10, "x11vnc to be gone after the technician ended")
    assert "view-only: dropped 4 input events" in world["broker"].log.read_text()


@pytest.mark.x11
def test_the_user_ending_stops_x11vnc(world: dict[str, Any], desk: Desk) -> None:
    xserver: XServer = world["xserver"]
    session_id = consented(desk, world["x"])

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            await RfbClient(ws).handshake()
            pids = x11vnc_of(xserver)
            ended = await asyncio.to_thread(on_pc, world["x"], "end", session_id)
            assert ended.returncode == 0, ended.stderr
            await closed_by_broker(ws, 5)
            return pids

    pids = asyncio.run(scenario())
    wait_for(lambda: gone(pids), 10, "x11vnc to be gone after the user ended")
    assert desk.wait_state(session_id, "ended")["end_reason"] == "user"


@pytest.mark.x11
def test_x11vnc_goes_when_the_agent_dies(world: dict[str, Any], desk: Desk) -> None:
    xserver: XServer = world["xserver"]
    agent = start_agent(
        world["fleet"], world["broker"], "doomed", agent_env(DISPLAY=xserver.display)
    )
    wait_for(lambda: online(world["broker"], agent.agent_id), 20, "agent online")
    session_id = consented(desk, agent)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            await RfbClient(ws).handshake()
            pids = x11vnc_of(xserver)
            assert agent.proc is not None
            agent.proc.kill()  # no clean-up code runs in the agent
            await closed_by_broker(ws)
            return pids

    pids = asyncio.run(scenario())
    wait_for(lambda: gone(pids), 10, "x11vnc to exit once its socket peer died")
    assert desk.wait_state(session_id, "ended")["end_reason"] == "agent_lost"


def test_no_display_fails_with_a_clear_reason(world: dict[str, Any], desk: Desk) -> None:
    session_id = consented(desk, world["headless"])

    async def scenario() -> websockets.ConnectionClosed:
        async with screen_socket(desk, session_id) as ws:
            return await closed_by_broker(ws)

    closed = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert "no X display" in closed.rcvd.reason and "DISPLAY" in closed.rcvd.reason
    final = desk.wait_state(session_id, "ended")
    assert final["end_reason"] == "error"
    records = audit(world["broker"], session_id)
    failed = next(r for r in records if r["type"] == "session.failed")
    assert "without DISPLAY" in failed["details"]["error"]
    ended = next(r for r in records if r["type"] == "session.ended")
    assert ended["details"]["end_reason"] == "error"


def test_a_hostile_vnc_server_does_not_crash_the_relay(world: dict[str, Any], desk: Desk) -> None:
    world["mode"].write_text("hostile")
    session_id = consented(desk, world["fake"])

    async def scenario() -> None:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            assert init.security_types == b"\x01", "the broker narrows security to None"
            # Markup stays text; escape and bidi control characters are gone.
            assert init.name == "<img src=x onerror=alert(1)>[31mevil"
            assert processes(str(world["mode"]), PYTHON_NAME), "the fake server runs"
            await client.request_raw(init)
            header = await client.read(16)
            assert header[4:12] == b"\0\0\0\0\xff\xff\xff\xff"  # the 65535x65535 rectangle
            await client.read(4096)

    asyncio.run(scenario())
    wait_for(lambda: not processes(str(world["mode"]), PYTHON_NAME), 10, "the fake server to go")
    broker: Broker = world["broker"]
    assert broker.proc is not None and broker.proc.poll() is None
    assert desk.client.get("/api/v1/agents").status_code == 200
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"


@pytest.mark.parametrize(
    ("mode", "said"),
    [("bad-name", "desktop name"), ("huge-screen", "impossible size 65535x65535")],
)
def test_a_malformed_server_init_fails_the_session(
    world: dict[str, Any], desk: Desk, mode: str, said: str
) -> None:
    world["mode"].write_text(mode)
    session_id = consented(desk, world["fake"])

    async def scenario() -> websockets.ConnectionClosed:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            with pytest.raises(websockets.ConnectionClosed) as caught:
                await client.handshake()
            return caught.value

    closed = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert said in closed.rcvd.reason
    assert desk.wait_state(session_id, "ended")["end_reason"] == "error"
    failed = next(r for r in audit(world["broker"], session_id) if r["type"] == "session.failed")
    assert said in failed["details"]["error"]
    assert world["broker"].proc.poll() is None


def test_the_screen_socket_checks_who_asks(world: dict[str, Any], desk: Desk) -> None:
    session_id = consented(desk, world["fake"])
    world["mode"].write_text("hostile")

    async def refused(**kwargs: Any) -> int:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with websockets.connect(
                desk.ws_url(session_id, "screen"), ssl=desk.broker.ssl_context(), **kwargs
            ):
                pass
        return caught.value.response.status_code

    cookie = {"Cookie": desk.cookie_header()}
    assert asyncio.run(refused(origin="https://evil.example", additional_headers=cookie)) == 403
    assert asyncio.run(refused(origin=desk.broker.url)) == 403  # no cookie
    assert desk.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 200


def test_the_page_files_are_served(world: dict[str, Any], desk: Desk) -> None:
    for path in ("/screen.html", "/js/pages/screen.js", "/screen.css"):
        assert desk.client.get(path).status_code == 200, path
    rfb = desk.client.get("/node_modules/@novnc/novnc/core/rfb.js")
    assert rfb.status_code == 200
    assert "javascript" in rfb.headers["content-type"]
    assert desk.client.get("/node_modules/@novnc/novnc/package.json").status_code == 404


def test_session_kind_must_be_screen(world: dict[str, Any], desk: Desk) -> None:
    answer = desk.request(world["fake"].agent_id, kind="shell", reason="wrong socket")
    session_id = answer.json()["id"]
    wait_pending(world["fake"], session_id)
    assert on_pc(world["fake"], "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")

    async def scenario() -> int:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with screen_socket(desk, session_id):
                pass
        return caught.value.response.status_code

    assert asyncio.run(scenario()) == 403
    assert desk.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 200
