"""Picking a monitor, through a real broker, real agents, a real x11vnc on an Xvfb cut
into two RandR monitors (``left``, ``right``: ``tests/kit/monitorkit.py``).

- the agent reports both in its hello, the console lists them;
- the technician asks for ``right``: the picture is that monitor's size and shows
  its window, not the left one's; ``all``: the whole desktop, both windows;
- the broker refuses, before the PC is asked, a monitor the PC did not report, a
  malformed one, one on a shell request, and any screen of a PC that reported it
  cannot share its screen (``screen: none``): 409/400, audited as a request that
  ended at once (``unsupported``);
- the agent refuses after consent a monitor its session no longer has (gone since
  its hello): the session fails with the reason, never a black picture.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from monitorkit import BOX, HALF, LEFT_COLOUR, RIGHT_COLOUR, SIZE, TwoMonitors, start_two_monitors

from browserkit import ARTIFACTS, console_signed_in
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
    pending,
    wait_for,
    wait_pending,
)
from screenkit import (
    RfbClient,
    ServerInit,
    agent_env,
    colour_box,
    on_pc,
    screen_socket,
    start_agent,
)

pytestmark = pytest.mark.x11


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("monitors")
    screens = start_two_monitors(root)
    fleet = Fleet(root)
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        agents = {
            "two": start_agent(fleet, broker, "two", agent_env(DISPLAY=screens.display)),
            "headless": start_agent(fleet, broker, "headless", agent_env()),
        }
        for agent in agents.values():
            wait_for(functools.partial(online, broker, agent.agent_id), 20, "agent online")
        yield {"broker": broker, "screens": screens, **agents}
    finally:
        fleet.close()
        screens.close()


@pytest.fixture
def desk(world: dict[str, Any]) -> Iterator[Desk]:
    desk = Desk.login(world["broker"], TECH, TECH_PW)
    yield desk
    desk.close()


def row(desk: Desk, agent: Agent) -> dict[str, Any]:
    rows: list[dict[str, Any]] = desk.client.get("/api/v1/agents").json()
    return next(r for r in rows if r["id"] == agent.agent_id)


def audit(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r["target"] == session_id]


def consented(desk: Desk, agent: Agent, monitor: str) -> str:
    answer = desk.request(agent.agent_id, kind="screen", reason="two screens", monitor=monitor)
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    wait_pending(agent, session_id)
    done = on_pc(agent, "allow", session_id)
    assert done.returncode == 0, done.stderr
    desk.wait_state(session_id, "active")
    return session_id


async def one_picture(desk: Desk, session_id: str) -> tuple[ServerInit, list[Any]]:
    async with screen_socket(desk, session_id) as ws:
        client = RfbClient(ws)
        init = await client.handshake()
        await client.request_raw(init)
        return init, await client.framebuffer_update(init)


def test_the_hello_lists_both_monitors(world: dict[str, Any], desk: Desk) -> None:
    listed = row(desk, world["two"])
    assert listed["screen"] == "x11"
    half_w, half_h = HALF
    assert listed["monitors"] == [
        {"name": "left", "width": half_w, "height": half_h, "x": 0, "y": 0, "primary": False},
        {"name": "right", "width": half_w, "height": half_h, "x": half_w, "y": 0, "primary": False},
    ]
    assert row(desk, world["headless"])["monitors"] == []


def test_the_second_monitor_alone(world: dict[str, Any], desk: Desk) -> None:
    session_id = consented(desk, world["two"], "right")
    init, rects = asyncio.run(one_picture(desk, session_id))
    assert (init.width, init.height) == HALF
    x, y, width, height = BOX
    assert colour_box(rects, init, RIGHT_COLOUR) == (x, y, width, height)
    assert colour_box(rects, init, LEFT_COLOUR) is None, "the left monitor shows through"
    desk.client.post(f"/api/v1/sessions/{session_id}/end")
    requested = next(
        r for r in audit(world["broker"], session_id) if r["type"] == "session.requested"
    )
    assert requested["details"]["monitor"] == "right"


def test_all_monitors(world: dict[str, Any], desk: Desk) -> None:
    session_id = consented(desk, world["two"], "all")
    init, rects = asyncio.run(one_picture(desk, session_id))
    assert (init.width, init.height) == SIZE
    x, y, width, height = BOX
    assert colour_box(rects, init, LEFT_COLOUR) == (x, y, width, height)
    assert colour_box(rects, init, RIGHT_COLOUR) == (x + HALF[0], y, width, height)
    desk.client.post(f"/api/v1/sessions/{session_id}/end")


def ended_records(world: dict[str, Any], session_id: str) -> list[dict[str, Any]]:
    return [r for r in audit(world["broker"], session_id) if r["type"] == "session.ended"]


def test_the_broker_refuses_a_monitor_the_pc_did_not_report(
    world: dict[str, Any], desk: Desk
) -> None:
    agent = world["two"]
    answer = desk.request(agent.agent_id, kind="screen", reason="forged", monitor="HDMI-9")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "monitor_unavailable"
    assert "no monitor 'HDMI-9'" in answer.json()["message"]
    assert "left, right" in answer.json()["message"]
    session = next(s for s in desk.client.get("/api/v1/sessions").json() if s["reason"] == "forged")
    assert session["state"] == "ended" and session["end_reason"] == "unsupported"
    (ended,) = ended_records(world, session["id"])
    assert "HDMI-9" in ended["details"]["error"]
    assert not [p for p in pending(agent) if p["session_id"] == session["id"]]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "screen", "monitor": "bad name"}, "bad_monitor"),
        ({"kind": "screen", "monitor": 3}, "bad_monitor"),
        ({"kind": "screen", "monitor": "x" * 65}, "bad_monitor"),
        ({"kind": "shell", "monitor": "left"}, "bad_monitor"),
    ],
)
def test_a_malformed_monitor_is_a_bad_request(
    world: dict[str, Any], desk: Desk, body: dict[str, Any], code: str
) -> None:
    agent_id = world["two"].agent_id
    answer = desk.client.post(
        "/api/v1/sessions", json={"agent_id": agent_id, "reason": "malformed", **body}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == code


def test_the_broker_refuses_a_screen_the_pc_said_it_cannot_share(
    world: dict[str, Any], desk: Desk
) -> None:
    agent = world["headless"]
    listed = row(desk, agent)
    assert listed["screen"] == "none" and listed["screen_problem"]
    answer = desk.request(agent.agent_id, kind="screen", reason="forged screen")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "screen_unavailable"
    assert listed["screen_problem"] in answer.json()["message"]
    session = next(
        s for s in desk.client.get("/api/v1/sessions").json() if s["reason"] == "forged screen"
    )
    assert session["end_reason"] == "unsupported"
    types = [r["type"] for r in audit(world["broker"], session["id"])]
    assert types[0] == "session.requested" and types[-1] == "session.ended"
    assert "consent.requested" not in types and "session.awaiting_consent" not in types
    # the same PC still takes what it can do
    shell = desk.request(agent.agent_id, kind="shell", reason="a shell is fine")
    assert shell.status_code == 201, shell.text
    desk.client.post(f"/api/v1/sessions/{shell.json()['id']}/end")


def test_the_agent_refuses_a_monitor_gone_since_its_hello(
    world: dict[str, Any], desk: Desk
) -> None:
    """The broker still has ``right`` from the hello; the PC no longer has it: after
    consent the screen closes with the reason, audited as session.failed."""
    screens: TwoMonitors = world["screens"]
    screens.xrandr("--delmonitor", "right")
    try:
        session_id = consented(desk, world["two"], "right")

        async def scenario() -> websockets.ConnectionClosed:
            async with screen_socket(desk, session_id) as ws:
                with pytest.raises(websockets.ConnectionClosed) as caught:
                    while True:
                        await asyncio.wait_for(ws.recv(), 20)
                return caught.value

        closed = asyncio.run(scenario())
    finally:
        half_w, half_h = HALF
        screens.xrandr("--setmonitor", "right", f"{half_w}/338x{half_h}/211+{half_w}+0", "none")
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert "no monitor 'right'" in closed.rcvd.reason
    assert desk.wait_state(session_id, "ended")["end_reason"] == "error"
    failed = [r for r in audit(world["broker"], session_id) if r["type"] == "session.failed"]
    assert failed and "no monitor 'right'" in failed[0]["details"]["error"]


@pytest.mark.browser
def test_the_console_picks_a_monitor(world: dict[str, Any], desk: Desk) -> None:
    """Screen… offers the PC's monitors (the first chosen: none is primary here) and
    All monitors; the one picked travels with the request."""
    broker: Broker = world["broker"]
    with console_signed_in(broker, TECH, TECH_PW) as page:
        row = page.locator(f'#machines-rows tr[data-agent="{world["two"].agent_id}"]')
        row.locator("button[data-screen='x11']").click()
        picker = page.locator("#request-monitor")
        picker.wait_for()
        labels = picker.locator("option").all_inner_texts()
        times = "\u00d7"  # the multiplication sign the console writes
        assert labels == [f"left (1280{times}800)", f"right (1280{times}800)", "All monitors"]
        assert picker.input_value() == "left"
        page.click("#request-kind label:has(input[value=shell])")
        assert page.locator("#request-monitor-row").is_hidden()
        page.click("#request-kind label:has(input[value=screen])")
        picker.select_option("right")
        page.fill("#request-form textarea[name=reason]", "picked in the console")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screen-monitor-picker.png"))
        page.click("#request-send")
        page.locator("#request-sent").wait_for()
    sessions = desk.client.get("/api/v1/sessions").json()
    session = next(s for s in sessions if s["reason"] == "picked in the console")
    desk.client.post(f"/api/v1/sessions/{session['id']}/end")
    requested = next(r for r in audit(broker, session["id"]) if r["type"] == "session.requested")
    assert requested["details"]["monitor"] == "right"
