"""Screen recordings through a real broker and a real agent: Xvfb, x11vnc, a Python RFB client.

Each screen session leaves ``recordings/ID.rfb`` whose SHA-256 is in its
``session.ended`` record; admins fetch it (technicians cannot), an altered one
is refused and that refusal is audited; a cap stops the recording and not the
session; retention deletes old ones, audited; a broker killed mid-session
leaves a recording that is made whole and hashed at its next start.
The player in Chromium: tests/console/test_screen_replay_browser.py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

from allowhelp.broker.audit.rfb_format import CLIENT, MARKER, SERVER, Frame, frames, read_header
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
    MARK_BOX,
    MARK_COLOUR,
    RfbClient,
    XServer,
    agent_env,
    colour_box,
    key_event,
    on_pc,
    screen_socket,
    start_agent,
    start_xserver,
)

pytestmark = pytest.mark.x11

KEYSYM_Q = 0x71
CAP = 64 * 1024
DAY = 86400


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("screenrec")
    xserver = start_xserver(root)
    fleet = Fleet(root)
    try:
        plain = fleet.broker("plain").start()
        capped = fleet.broker(
            "capped", extra=["--recording-max", str(CAP), "--recordings-min-free", "0"]
        ).start()
        for broker in (plain, capped):
            broker.add_user(ADMIN, ADMIN_PW, role="admin")
            broker.add_user(TECH, TECH_PW)
        agents = {
            "plain": start_agent(fleet, plain, "pc1", agent_env(DISPLAY=xserver.display)),
            "capped": start_agent(fleet, capped, "pc2", agent_env(DISPLAY=xserver.display)),
        }
        for name, agent in agents.items():
            broker = plain if name == "plain" else capped
            wait_for(functools.partial(online, broker, agent.agent_id), 20, "agent online")
        yield {
            "xserver": xserver,
            "plain": (plain, agents["plain"]),
            "capped": (capped, agents["capped"]),
        }
    finally:
        fleet.close()
        xserver.close()


@dataclass
class Tap:
    """The technician's socket, every byte each way kept."""

    ws: Any
    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)

    async def recv(self) -> bytes:
        data: bytes = await self.ws.recv()
        self.received += data
        return data

    async def send(self, data: bytes) -> None:
        self.sent += data
        await self.ws.send(data)


def consented(broker: Broker, agent: Agent) -> tuple[Desk, str]:
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.request(agent.agent_id, kind="screen", reason="recording test")
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    wait_pending(agent, session_id)
    done = on_pc(agent, "allow", session_id)
    assert done.returncode == 0, done.stderr
    desk.wait_state(session_id, "active")
    return desk, session_id


def audit(broker: Broker, type_: str, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r["type"] == type_ and r["target"] == session_id]


def parsed(path: Path) -> tuple[dict[str, Any], list[Frame]]:
    with path.open("rb") as handle:
        meta, start = read_header(handle)
        return meta, [frame for _, frame in frames(handle, start)]


def stream(found: list[Frame], kind: int) -> bytes:
    return b"".join(f.rfb for f in found if f.kind == kind)


def recording_of(broker: Broker, session_id: str) -> Path:
    return broker.data / "recordings" / f"{session_id}.rfb"


def ended(desk: Desk, session_id: str) -> dict[str, Any]:
    desk.wait_state(session_id, "ended")
    records = audit(desk.broker, "session.ended", session_id)
    assert len(records) == 1
    details: dict[str, Any] = records[0]["details"]
    return details


async def watch_and_type(desk: Desk, session_id: str, xserver: XServer) -> Tap:
    """Shake hands, take one whole picture, type a key at the PC; then leave."""
    async with screen_socket(desk, session_id) as ws:
        tap = Tap(ws)
        client = RfbClient(tap)
        init = await client.handshake()
        await client.request_raw(init)
        rects = await client.framebuffer_update(init)
        assert colour_box(rects, init, MARK_COLOUR) == MARK_BOX
        mark = xserver.keys_mark()
        xserver.focus_window()
        await client.send(key_event(KEYSYM_Q, True) + key_event(KEYSYM_Q, False))
        await asyncio.to_thread(
            wait_for, lambda: "keysym 0x71, q)" in xserver.keys_since(mark), 10, "the key"
        )
    return tap


def fetch(broker: Broker, user: str, password: str, session_id: str) -> Any:
    desk = Desk.login(broker, user, password)
    try:
        return desk.client.get(f"/api/v1/sessions/{session_id}/recording")
    finally:
        desk.close()


def test_a_screen_session_is_recorded_and_its_digest_is_in_the_end_record(
    world: dict[str, Any],
) -> None:
    broker, agent = world["plain"]
    desk, session_id = consented(broker, agent)
    tap = asyncio.run(watch_and_type(desk, session_id, world["xserver"]))
    details = ended(desk, session_id)
    desk.close()
    path = recording_of(broker, session_id)
    data = path.read_bytes()
    assert details["recording_sha256"] == hashlib.sha256(data).hexdigest()
    assert details["recording_bytes"] == len(data)
    started = audit(broker, "session.started", session_id)[0]["details"]
    assert started["recording"] == path.name
    meta, found = parsed(path)
    assert meta["session"] == session_id and meta["technician"] == TECH
    assert meta["format"] == "allowhelp-rfb-1" and meta["view_only"] is False
    # What the PC sent, as the technician got it: the whole picture is in there.
    server = stream(found, SERVER)
    assert server.startswith(b"RFB 003.008\n") and server.startswith(bytes(tap.received))
    assert len(server) > 800 * 600 * 4
    # What the technician sent, as the PC got it, and who sent it: the key is there.
    assert stream(found, CLIENT) == bytes(tap.sent)
    assert {f.sender for f in found if f.kind == CLIENT} == {TECH}
    assert key_event(KEYSYM_Q, True) in stream(found, CLIENT)
    times = [f.millis for f in found]
    assert times == sorted(times) and not any(f.kind == MARKER for f in found)

    # The admin gets it, as it is, and that replay is audited; a technician cannot.
    answer = fetch(broker, ADMIN, ADMIN_PW, session_id)
    assert answer.status_code == 200, answer.text
    assert answer.content == data
    assert answer.headers["content-type"] == "application/x-allowhelp-rfb"
    assert answer.headers["x-recording-format"] == "allowhelp-rfb-1"
    replayed = audit(broker, "session.replayed", session_id)
    assert [r["actor"] for r in replayed] == [f"admin:{ADMIN}"]
    assert replayed[0]["details"]["recording_sha256"] == details["recording_sha256"]
    refused = fetch(broker, TECH, TECH_PW, session_id)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert len(audit(broker, "session.replayed", session_id)) == 1


def test_an_altered_recording_is_refused_and_the_refusal_audited(world: dict[str, Any]) -> None:
    broker, agent = world["plain"]
    desk, session_id = consented(broker, agent)
    asyncio.run(watch_and_type(desk, session_id, world["xserver"]))
    ended(desk, session_id)
    desk.close()
    path = recording_of(broker, session_id)
    data = path.read_bytes()
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF  # one pixel of the picture changed
    path.write_bytes(bytes(altered))
    answer = fetch(broker, ADMIN, ADMIN_PW, session_id)
    assert answer.status_code == 409
    assert answer.json()["error"] == "recording_altered"
    assert "does not match its audit digest" in answer.json()["message"]
    refused = audit(broker, "recording.refused", session_id)
    assert len(refused) == 1 and refused[0]["actor"] == f"admin:{ADMIN}"
    assert refused[0]["code"] == "AH1801"
    assert refused[0]["details"]["code"] == "recording_altered"
    assert audit(broker, "session.replayed", session_id) == []
    path.write_bytes(data)  # put back as it was: it replays again
    assert fetch(broker, ADMIN, ADMIN_PW, session_id).status_code == 200


async def picture_past_the_cap(desk: Desk, session_id: str, broker: Broker) -> None:
    async with screen_socket(desk, session_id) as ws:
        client = RfbClient(ws)
        init = await client.handshake()
        await client.request_raw(init)
        await client.framebuffer_update(init)  # about 1.9 MB: far past the cap
        stopped = await asyncio.to_thread(
            wait_for, lambda: audit(broker, "recording.stopped", session_id), 15, "the stop"
        )
        assert stopped[0]["details"]["reason"] == "cap"
        # The session goes on: another whole picture comes through.
        await client.request_raw(init)
        rects = await client.framebuffer_update(init)
        assert colour_box(rects, init, MARK_COLOUR) == MARK_BOX


def test_the_cap_stops_the_recording_not_the_session(world: dict[str, Any]) -> None:
    broker, agent = world["capped"]
    desk, session_id = consented(broker, agent)
    asyncio.run(picture_past_the_cap(desk, session_id, broker))
    details = ended(desk, session_id)
    desk.close()
    assert details["end_reason"] == "technician"
    path = recording_of(broker, session_id)
    data = path.read_bytes()
    assert len(data) <= CAP and details["recording_bytes"] == len(data)
    assert details["recording_sha256"] == hashlib.sha256(data).hexdigest()
    assert details["recording_truncated"] is True and details["recording_stopped"] == "cap"
    stopped = audit(broker, "recording.stopped", session_id)[0]
    assert stopped["details"]["recording"] == path.name
    _, found = parsed(path)
    assert found[-1].kind == MARKER and b"size cap" in found[-1].payload
    assert fetch(broker, ADMIN, ADMIN_PW, session_id).content == data


async def handshake_only(desk: Desk, session_id: str) -> None:
    async with screen_socket(desk, session_id) as ws:
        await RfbClient(ws).handshake()


def test_retention_deletes_old_recordings_audited(world: dict[str, Any]) -> None:
    broker, agent = world["capped"]
    ids = []
    for _ in range(2):
        desk, session_id = consented(broker, agent)
        asyncio.run(handshake_only(desk, session_id))
        ended(desk, session_id)
        desk.close()
        ids.append(session_id)
    old, young = (recording_of(broker, i) for i in ids)
    assert broker.stop() == 0
    long_ago = time.time() - 100 * DAY
    os.utime(old, (long_ago, long_ago))
    # the keep counts from the session's end record: both ended over 2 s ago once
    # the broker is back; the young one was written again since (its file is new)
    os.utime(young, (time.time() + DAY,) * 2)
    time.sleep(2.1)
    broker.extra += ["--recordings-keep", "2s"]
    broker.start()
    expired = wait_for(lambda: audit(broker, "recording.expired", ids[0]), 15, "the deletion")
    assert expired[0]["code"] == "AH1802" and expired[0]["actor"] == "system"
    assert expired[0]["details"]["recording"] == old.name
    end = audit(broker, "session.ended", ids[0])[0]
    assert expired[0]["details"]["ended_seq"] == end["seq"]
    assert expired[0]["details"]["session_ended"] == end["ts"]
    assert not old.exists() and young.exists()
    assert audit(broker, "recording.expired", ids[1]) == []
    answer = fetch(broker, ADMIN, ADMIN_PW, ids[0])
    assert answer.status_code == 404 and "missing" in answer.json()["message"]
    assert fetch(broker, ADMIN, ADMIN_PW, ids[1]).status_code == 200


def test_a_bad_keep_is_one_clear_line() -> None:
    done = broker_cli("serve", "--data", "/nonexistent/never", "--recordings-keep", "ninety")
    assert done.returncode != 0
    assert "--recordings-keep must be a duration such as 90d" in done.stderr
    assert "Traceback" not in done.stderr


async def killed_mid_screen(desk: Desk, session_id: str, broker: Broker) -> bytes:
    path = recording_of(broker, session_id)
    async with screen_socket(desk, session_id) as ws:
        tap = Tap(ws)
        client = RfbClient(tap)
        init = await client.handshake()
        await client.request_raw(init)
        await client.framebuffer_update(init)
        # The picture the technician saw is on its way to the disk: kill once it is there.
        await asyncio.to_thread(
            wait_for, lambda: path.stat().st_size > 800 * 600 * 4, 10, "the picture on disk"
        )
        await client.request_raw(init)  # more on the way as the broker dies
        await asyncio.to_thread(broker.kill)
        with pytest.raises(websockets.ConnectionClosed):  # the socket dies with the broker
            while True:
                await client.read(1 << 20, timeout=10)
    return bytes(tap.received)


def test_a_broker_killed_mid_screen_leaves_a_recording_that_replays(
    world: dict[str, Any],
) -> None:
    broker, agent = world["plain"]
    desk, session_id = consented(broker, agent)
    seen = asyncio.run(killed_mid_screen(desk, session_id, broker))
    desk.close()
    broker.start()
    records = wait_for(lambda: audit(broker, "session.ended", session_id), 15, "the end record")
    details = records[0]["details"]
    path = recording_of(broker, session_id)
    data = path.read_bytes()
    assert details["end_reason"] == "broker_restart"
    assert details["recording_recovered"] is True
    assert details["recording_sha256"] == hashlib.sha256(data).hexdigest()
    _, found = parsed(path)  # whole frames only
    server = stream(found, SERVER)
    assert server.startswith(b"RFB 003.008\n") and len(server) > 800 * 600 * 4
    assert seen.startswith(server) or server.startswith(seen)  # one stream, cut somewhere
    assert fetch(broker, ADMIN, ADMIN_PW, session_id).content == data
    verify = broker_cli("audit", "verify", "--data", str(broker.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    wait_for(lambda: online(broker, agent.agent_id), 30, "the agent to come back")
