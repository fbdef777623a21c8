"""Invitations (#18) on a screen: a real Xvfb, real x11vnc, a real broker and agent.

Each participant has their own RFB connection: the agent runs one x11vnc per
channel (``-inetd``), with ``-viewonly`` for an observer, and drops the
observer's input itself too (``rfbinput.py``), as the broker does
(``relay/rfb.py``). Whether the observer's key reached the display is decided
by a fact: a marker key typed at the PC afterwards is in the key log, the
observer's key is not, and the owner's key is.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.broker.audit.recording import file_sha256
from allowhelp.broker.audit.rfb_format import CLIENT, SERVER, frames, read_header
from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    broker_cli,
    running_fleet,
    wait_for,
    wait_pending,
)
from screenkit import (
    RfbClient,
    XServer,
    command_line,
    key_event,
    on_pc,
    pointer_event,
    processes,
    screen_socket,
    start_xserver,
)

OBSERVER = "ahobsscreen"
CONTROLLER = "ahctlscreen"
PASSWORD = "a long test password 2"
KEYSYM_A, KEYSYM_Z, KEYSYM_Q, KEYSYM_W, MARKER = 0x61, 0x7A, 0x71, 0x77, "m"
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", TEST_COMMAND_ENV)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent, XServer]]:
    xserver = start_xserver(tmp_path_factory.mktemp("xvfb"))
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
    try:
        with running_fleet(
            tmp_path_factory.mktemp("invites-screen"),
            agent_args=("--reconnect-cap", "2", "--prompt", "none"),
            agent_env={**env, "DISPLAY": xserver.display},
        ) as (_, broker, agent):
            broker.add_user(OBSERVER, PASSWORD)
            broker.add_user(CONTROLLER, PASSWORD)
            yield broker, agent, xserver
    finally:
        xserver.close()


@pytest.mark.x11
def test_an_observers_rfb_input_does_not_reach_the_x_server(
    world: tuple[Broker, Agent, XServer],
) -> None:
    broker, agent, xserver = world
    owner, observer = Desk.login(broker, TECH, TECH_PW), Desk.login(broker, OBSERVER, PASSWORD)
    try:
        answer = owner.request(agent.agent_id, kind="screen", reason="screen invite test")
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        wait_pending(agent, session_id)
        assert on_pc(agent, "allow", session_id).returncode == 0
        owner.wait_state(session_id, "active")
        asked = owner.client.post(
            f"/api/v1/sessions/{session_id}/invite", json={"username": OBSERVER, "mode": "observe"}
        )
        assert asked.status_code == 201, asked.text
        invitation = asked.json()
        pending = wait_pending(agent, invitation["id"])
        assert pending["kind"] == "screen" and pending["mode"] == "observe"
        assert on_pc(agent, "allow", invitation["id"]).returncode == 0
        asyncio.run(_two_viewers(owner, observer, session_id, xserver))
    finally:
        owner.close()
        observer.close()


async def _two_viewers(owner: Desk, observer: Desk, session_id: str, xserver: XServer) -> None:
    async with screen_socket(owner, session_id) as owner_ws:
        owner_rfb = RfbClient(owner_ws)
        owner_init = await owner_rfb.handshake()
        async with screen_socket(observer, session_id) as observer_ws:
            watcher = RfbClient(observer_ws)
            init = await watcher.handshake()
            await watcher.request_raw(init)
            assert await watcher.framebuffer_update(init)  # the observer sees the screen
            pids = wait_for(
                lambda: len(processes(xserver.display)) == 2 and processes(xserver.display),
                10,
                "two x11vnc",
            )
            lines = [command_line(pid) for pid in pids]
            assert sum("-viewonly" in line for line in lines) == 1  # the observer's own
            mark = xserver.keys_mark()
            xserver.focus_window()
            await watcher.send(key_event(KEYSYM_Z, True) + key_event(KEYSYM_Z, False))
            await watcher.send(pointer_event(0, 10, 10))
            await watcher.request_raw(init)
            assert await watcher.framebuffer_update(init)
            await owner_rfb.send(key_event(KEYSYM_A, True) + key_event(KEYSYM_A, False))
            await owner_rfb.request_raw(owner_init)
            assert await owner_rfb.framebuffer_update(owner_init)
            await asyncio.to_thread(xserver.type_locally, MARKER)
            await asyncio.to_thread(
                wait_for, lambda: "keysym 0x6d, m)" in xserver.keys_since(mark), 10, "the marker"
            )
            seen = xserver.keys_since(mark)
            assert "keysym 0x61, a)" in seen  # the owner's key
            assert "keysym 0x7a, z)" not in seen  # the observer's: dropped


@pytest.mark.x11
def test_a_control_invitees_keys_reach_the_pc_and_the_recording_under_their_name(
    world: tuple[Broker, Agent, XServer],
) -> None:
    """One recording per session: the PC's stream as the owner got it, and each
    person's input with their own name (the invitee's through their own x11vnc)."""
    broker, agent, xserver = world
    owner, helper = Desk.login(broker, TECH, TECH_PW), Desk.login(broker, CONTROLLER, PASSWORD)
    try:
        answer = owner.request(agent.agent_id, kind="screen", reason="screen control invite")
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        wait_pending(agent, session_id)
        assert on_pc(agent, "allow", session_id).returncode == 0
        owner.wait_state(session_id, "active")
        asked = owner.client.post(
            f"/api/v1/sessions/{session_id}/invite",
            json={"username": CONTROLLER, "mode": "control"},
        )
        assert asked.status_code == 201, asked.text
        invitation = asked.json()
        assert wait_pending(agent, invitation["id"])["mode"] == "control"
        assert on_pc(agent, "allow", invitation["id"]).returncode == 0
        asyncio.run(_owner_and_controller(owner, helper, session_id, xserver))
        owner.wait_state(session_id, "ended")  # the owner's viewer closed: the session ends
    finally:
        owner.close()
        helper.close()
    inputs = recorded_inputs(broker, session_id)
    assert key_event(KEYSYM_A, True) in inputs[TECH]
    assert key_event(KEYSYM_Q, True) in inputs[CONTROLLER]
    assert key_event(KEYSYM_Q, True) not in inputs[TECH]


def recorded_inputs(broker: Broker, session_id: str) -> dict[str, bytes]:
    """Who sent what, as the session's recording holds it."""
    with (broker.data / "recordings" / f"{session_id}.rfb").open("rb") as handle:
        _, start = read_header(handle)
        inputs: dict[str, bytes] = {}
        for _, frame in frames(handle, start):
            if frame.kind == CLIENT:
                inputs[frame.sender] = inputs.get(frame.sender, b"") + frame.rfb
    return inputs


def server_bytes(broker: Broker, session_id: str) -> int:
    with (broker.data / "recordings" / f"{session_id}.rfb").open("rb") as handle:
        _, start = read_header(handle)
        return sum(len(frame.rfb) for _, frame in frames(handle, start) if frame.kind == SERVER)


def end_record(broker: Broker, session_id: str) -> dict[str, Any]:
    ended = audit_records(broker)
    found = [r for r in ended if r["type"] == "session.ended" and r["target"] == session_id]
    assert len(found) == 1
    record: dict[str, Any] = found[0]
    return record


@pytest.mark.x11
def test_an_invitee_sees_the_screen_only_while_the_owners_viewer_records_it(
    world: tuple[Broker, Agent, XServer],
) -> None:
    """Each participant's picture is their own stream from the PC; the session's
    one recording holds the owner's viewer's. So an invitee who comes before the
    owner's viewer is refused (403, and why is on the record), then joins once it is open, their
    keys in that recording under their name; in a second session the owner's
    viewer never connects and the invitee never sees the PC unrecorded."""
    broker, agent, xserver = world
    owner, helper = Desk.login(broker, TECH, TECH_PW), Desk.login(broker, CONTROLLER, PASSWORD)
    try:
        first = _screen_with_controller(owner, helper, agent, "invitee before the owner")
        assert asyncio.run(_screen_refused(helper, first)) == 403
        asyncio.run(_owner_then_controller(owner, helper, first, xserver))
        owner.wait_state(first, "ended")
        second = _screen_with_controller(owner, helper, agent, "the owner never looks")
        assert asyncio.run(_screen_refused(helper, second)) == 403
        answer = owner.client.post(f"/api/v1/sessions/{second}/end")
        assert answer.status_code == 200, answer.text
        owner.wait_state(second, "ended")
    finally:
        owner.close()
        helper.close()
    refusals = [r for r in audit_records(broker) if r["type"] == "participant.refused"]
    assert {r["target"] for r in refusals} >= {first, second}
    assert all("has not opened" in r["details"]["error"] for r in refusals)
    inputs = recorded_inputs(broker, first)
    assert key_event(KEYSYM_W, True) in inputs[CONTROLLER]
    assert key_event(KEYSYM_A, True) in inputs[TECH]
    assert not inputs[CONTROLLER].startswith(b"RFB ")  # their input, not their viewer's handshake
    assert server_bytes(broker, first) > 0  # the owner's picture
    details = end_record(broker, first)["details"]
    path = broker.data / "recordings" / f"{first}.rfb"
    assert details["recording_sha256"] == file_sha256(path)
    assert details["recording_bytes"] == path.stat().st_size
    assert not (broker.data / "recordings" / f"{second}.rfb").exists()  # nothing was shown


async def _screen_refused(desk: Desk, session_id: str) -> int:
    """The HTTP status that refused ``desk``'s screen WebSocket on ``session_id``."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with screen_socket(desk, session_id):
            pass
    return caught.value.response.status_code


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _screen_with_controller(owner: Desk, helper: Desk, agent: Agent, reason: str) -> str:
    """An active screen session whose owner invited ``helper`` to control, allowed."""
    answer = owner.request(agent.agent_id, kind="screen", reason=reason)
    assert answer.status_code == 201, answer.text
    session_id = str(answer.json()["id"])
    wait_pending(agent, session_id)
    assert on_pc(agent, "allow", session_id).returncode == 0
    owner.wait_state(session_id, "active")
    asked = owner.client.post(
        f"/api/v1/sessions/{session_id}/invite", json={"username": CONTROLLER, "mode": "control"}
    )
    assert asked.status_code == 201, asked.text
    wait_pending(agent, asked.json()["id"])
    assert on_pc(agent, "allow", asked.json()["id"]).returncode == 0
    wait_for(
        lambda: helper.session(session_id)["invitation"]["state"] == "allowed",
        15,
        "the invitation allowed",
    )
    return session_id


async def _type_w(client: RfbClient, xserver: XServer) -> None:
    """``client`` types w; it reaches the PC."""
    init = await client.handshake()
    mark = xserver.keys_mark()
    xserver.focus_window()
    await client.send(key_event(KEYSYM_W, True) + key_event(KEYSYM_W, False))
    await client.request_raw(init)
    assert await client.framebuffer_update(init)
    await asyncio.to_thread(
        wait_for, lambda: "0x77, w)" in xserver.keys_since(mark), 10, "the invitee's key"
    )


async def _owner_then_controller(
    owner: Desk, helper: Desk, session_id: str, xserver: XServer
) -> None:
    async with screen_socket(owner, session_id) as owner_ws:
        owner_rfb = RfbClient(owner_ws)
        owner_init = await owner_rfb.handshake()
        async with screen_socket(helper, session_id) as helper_ws:
            await _type_w(RfbClient(helper_ws), xserver)
        await owner_rfb.send(key_event(KEYSYM_A, True) + key_event(KEYSYM_A, False))
        await owner_rfb.request_raw(owner_init)
        assert await owner_rfb.framebuffer_update(owner_init)


async def _owner_and_controller(
    owner: Desk, helper: Desk, session_id: str, xserver: XServer
) -> None:
    async with screen_socket(owner, session_id) as owner_ws:
        owner_rfb = RfbClient(owner_ws)
        owner_init = await owner_rfb.handshake()
        async with screen_socket(helper, session_id) as helper_ws:
            second = RfbClient(helper_ws)
            init = await second.handshake()
            mark = xserver.keys_mark()
            xserver.focus_window()
            await second.send(key_event(KEYSYM_Q, True) + key_event(KEYSYM_Q, False))
            await second.request_raw(init)
            assert await second.framebuffer_update(init)
            await owner_rfb.send(key_event(KEYSYM_A, True) + key_event(KEYSYM_A, False))
            await owner_rfb.request_raw(owner_init)
            assert await owner_rfb.framebuffer_update(owner_init)
            await asyncio.to_thread(
                wait_for,
                lambda: all(k in xserver.keys_since(mark) for k in ("0x71, q)", "0x61, a)")),
                10,
                "both keys on the PC",
            )
