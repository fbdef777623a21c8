"""A full disk in the middle of a live shell: the end is agreed, closed plainly, and owed.

The broker's data folder is a real 24 MiB tmpfs; the test fills it while a
technician is attached to a consented shell, then the user ends the session
on the PC. The end cannot be recorded: access stops anyway (the socket
closes with 1011 naming the audit log), nothing claims the session ended on
the record, and once space is back the owed ``session.ended`` is written.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    broker_cli,
    online,
    staffed_broker,
    wait_for,
    wait_pending,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Broker, Agent, Path]]:
    data = tmp_path / "broker"
    data.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(data)], check=True
    )
    try:
        with staffed_broker(tmp_path) as fleet:
            broker = fleet.brokers[0]
            agent = fleet.agent()
            assert agent.enroll(broker.token()).returncode == 0
            agent.start("--reconnect-cap", "2")
            wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
            yield broker, agent, data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def audit_refuses(broker: Broker) -> bool:
    """True once the audit log refuses records (SQLite may fit a few in free pages)."""
    with broker.sync_client() as client:
        for _ in range(60):
            answer = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
            if answer.status_code == 503:
                return True
    return False


def ended_records(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [
        r
        for r in map(json.loads, done.stdout.splitlines())
        if r["type"] == "session.ended" and r["target"] == session_id
    ]


async def test_the_user_ending_on_a_full_disk_closes_plainly_and_the_record_follows(
    world: tuple[Broker, Agent, Path],
) -> None:
    broker, agent, disk = world
    desk = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
    try:
        await _end_on_a_full_disk(broker, agent, disk, desk)
    finally:
        desk.close()


async def _end_on_a_full_disk(broker: Broker, agent: Agent, disk: Path, desk: Desk) -> None:
    session_id = desk.request(agent.agent_id).json()["id"]
    await asyncio.to_thread(wait_pending, agent, session_id)
    assert agent_call(agent, "allow", session_id).returncode == 0
    await asyncio.to_thread(desk.wait_state, session_id, "active")
    async with websockets.connect(
        desk.ws_url(session_id),
        ssl=broker.ssl_context(),
        origin=broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as ws:
        await ws.send(b"echo still-here\n")
        seen = b""
        while b"still-here\r\n" not in seen:
            seen += await asyncio.wait_for(ws.recv(), 10)  # type: ignore[operator]
        filler = await asyncio.to_thread(fill, disk)
        assert await asyncio.to_thread(audit_refuses, broker)
        assert agent_call(agent, "end", session_id).returncode == 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
    frame = closed.value.rcvd
    assert frame is not None and frame.code == 1011, frame
    assert "audit" in frame.reason
    # Nothing claims the session ended on the record, and the PC holds no grant.
    assert desk.session(session_id)["state"] == "active"
    assert ended_records(broker, session_id) == []
    status = agent_call(agent, "pending", "--json")
    assert session_id not in status.stdout
    filler.unlink()
    ended = await asyncio.to_thread(desk.wait_state, session_id, "ended", 60)
    assert ended["end_reason"] == "user"
    records = ended_records(broker, session_id)
    assert len(records) == 1 and records[0]["details"]["recorded_late"] is True
    assert records[0]["actor"] == f"user@{agent.agent_id}"
    assert "Traceback" not in broker.log.read_text()
