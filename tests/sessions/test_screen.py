"""The screen through a real broker and real agents: Xvfb, x11vnc, a Python RFB client.

One private Xvfb (on a display number it picks) with an ``xev`` window that
logs every key it gets and a window of a known colour; four agents on one
broker: one on that display, one on that display whose x11vnc never runs with
its own ``-viewonly`` (so only the broker's filter keeps a view-only grant
view-only), one started without DISPLAY, one whose "x11vnc" is a hostile fake
(tests/fake_vnc.py).

Whether input reached the display is decided by a fact, not by a pause: after
the technician's input, one more request goes through x11vnc (which handles a
client's messages in order), then a marker key is typed at the PC itself. Once
the marker is in the key log, everything the technician's input did is there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.agent.x11vnc import x11vnc_argv
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
    log_mark,
    log_since,
    online,
    pending,
    wait_for,
    wait_pending,
)
from screenkit import (
    FAKE_VNC,
    KEYLOG_BOX,
    MARK_BOX,
    MARK_COLOUR,
    PYTHON_NAME,
    SCREEN_SIZE,
    RfbClient,
    ServerInit,
    XServer,
    agent_env,
    colour_box,
    command_line,
    gone,
    key_event,
    listening_inodes,
    on_pc,
    pixel_at,
    pointer_event,
    processes,
    screen_socket,
    socket_inodes,
    start_agent,
    start_xserver,
)

KEYSYM_A, KEYSYM_Z = 0x61, 0x7A
MARKER, MARKER_SEEN = "m", "keysym 0x6d, m)"
Z_SEEN = "keysym 0x7a, z)"
POINTER_TO = (123, 77)  # away from where focus_window leaves the pointer (400, 300)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


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
        # x11vnc as the agent runs it for a control grant, whatever the grant: its
        # own -viewonly is never on, so a view-only grant rests on the broker alone.
        x11vnc = shutil.which("x11vnc")
        assert x11vnc is not None, "x11vnc is needed"
        raw = shlex.join(x11vnc_argv(x11vnc, xserver.display, view_only=False))
        agents = {
            "x": start_agent(fleet, broker, "x", agent_env(DISPLAY=xserver.display)),
            "x-raw": start_agent(
                fleet,
                broker,
                "x-raw",
                agent_env(DISPLAY=xserver.display, **{TEST_COMMAND_ENV: raw}),
            ),
            "headless": start_agent(fleet, broker, "headless", agent_env()),
            "fake": start_agent(
                fleet,
                broker,
                "fake",
                agent_env(**{TEST_COMMAND_ENV: f"{sys.executable} {FAKE_VNC} {mode}"}),
            ),
        }
        for agent in agents.values():
            wait_for(functools.partial(online, broker, agent.agent_id), 20, "agent online")
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


async def input_then_marker(client: RfbClient, init: ServerInit, xserver: XServer) -> str:
    """Send a key (z), a pointer move and a cut text as the technician; once x11vnc
    has answered a later request, type the marker key at the PC and wait for it.
    Returns the key log from before the input to the marker: all the input did."""
    mark = xserver.keys_mark()
    xserver.focus_window()
    cut = b"\x06\0\0\0" + (5).to_bytes(4, "big") + b"hello"
    await client.send(key_event(KEYSYM_Z, True))
    await client.send(key_event(KEYSYM_Z, False) + pointer_event(0, *POINTER_TO) + cut)
    # The stream goes on after the (possibly dropped) events: ask for a picture.
    await client.request_raw(init)
    assert await client.framebuffer_update(init)
    await asyncio.to_thread(xserver.type_locally, MARKER)
    await asyncio.to_thread(
        wait_for, lambda: MARKER_SEEN in xserver.keys_since(mark), 10, "the marker key"
    )
    return xserver.keys_since(mark)


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
            # The PC's own screen, where it is: the known-colour window exactly at
            # its place, the white keys window, the black root around them.
            assert colour_box(rects, init, MARK_COLOUR) == MARK_BOX
            x, y, _, _ = KEYLOG_BOX
            assert pixel_at(rects, init, x + 50, y + 50) == WHITE
            assert pixel_at(rects, init, 5, SCREEN_SIZE[1] - 5) == BLACK
            assert pixel_at(rects, init, SCREEN_SIZE[0] - 5, 5) == BLACK
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
            seen = await input_then_marker(client, init, xserver)
            assert "keysym 0x7a" not in seen, "a view-only key reached the PC"
            ended = await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
            assert ended.status_code == 200
            closed = await closed_by_broker(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1000
            return pids

    pids = asyncio.run(scenario())
    assert desk.session(session_id)["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 10, "x11vnc to be gone after the technician ended")
    # the relay says what it dropped when it finishes, which may be after the end's answer
    wait_for(
        lambda: "view-only: dropped 4 input events" in world["broker"].log.read_text(),
        10,
        "the broker to say what it dropped",
    )


@pytest.mark.x11
@pytest.mark.parametrize("view_only", [False, True], ids=["control", "view-only"])
def test_the_broker_alone_keeps_a_view_only_grant_view_only(
    world: dict[str, Any], desk: Desk, view_only: bool
) -> None:
    """x11vnc without its own -viewonly takes whatever reaches it: under control
    the key and the pointer move arrive (so this test can fail); under a view-only
    grant the broker's filter is all that stands between them and the PC."""
    xserver: XServer = world["xserver"]
    broker: Broker = world["broker"]
    session_id = consented(desk, world["x-raw"], view_only=view_only)
    log_at = log_mark(broker.log)

    async def scenario() -> tuple[str, tuple[int, int], list[int]]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            pids = x11vnc_of(xserver)
            assert len(pids) == 1 and "-viewonly" not in command_line(pids[0])
            seen = await input_then_marker(client, init, xserver)
            pointer = await asyncio.to_thread(xserver.pointer)
            ended = await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
            assert ended.status_code == 200
            await closed_by_broker(ws)
            return seen, pointer, pids

    seen, pointer, pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["view_only"] is view_only
    # its x11vnc is gone before the next test counts the display's (the end's answer
    # comes before the agent has reaped it)
    wait_for(lambda: gone(pids), 10, "x11vnc to be gone after the technician ended")
    if view_only:
        assert "keysym 0x7a" not in seen, "a view-only key reached the PC"
        assert pointer != POINTER_TO, "a view-only pointer move reached the PC"
        wait_for(
            lambda: "view-only: dropped 4 input events" in log_since(broker.log, log_at),
            10,
            "the broker to say what it dropped",
        )
    else:
        assert Z_SEEN in seen and seen.index(Z_SEEN) < seen.index(MARKER_SEEN), seen
        assert pointer == POINTER_TO


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
    """The agent said in its hello that it has no display (``screen: none``): the broker
    refuses at once with its reason (#15), audited; the PC is never asked."""
    agent = world["headless"]
    answer = desk.request(agent.agent_id, kind="screen", reason="screen test headless")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "screen_unavailable"
    assert "no X display" in answer.json()["message"] and "DISPLAY" in answer.json()["message"]
    sessions = desk.client.get("/api/v1/sessions").json()
    session = next(s for s in sessions if s["reason"] == "screen test headless")
    assert session["end_reason"] == "unsupported"
    records = audit(world["broker"], session["id"])
    assert [r["type"] for r in records] == ["session.requested", "session.ended"]
    assert "without DISPLAY" in records[-1]["details"]["error"]
    assert not any(p["session_id"] == session["id"] for p in pending(agent))


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
