"""Invitations (#18) on a PC with the machine service: the signed-in user (a real
local user, through their session helper and CLI) is asked about the invitee,
sees who is connected, and removes them; the observer's keys never reach the shell."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from machinekit import CAN_RUN, WHY_NOT, Machine
from signedinkit import signed_in_pc

from harness import TECH, TECH_PW, Broker, Desk, broker_cli, wait_for
from terminalkit import terminal

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)

USER = "ahobserversm"  # the Unix user signed in at the PC (this branch's own name)
GUEST, PASSWORD = "ahobsguest", "a long test password 4"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with signed_in_pc(tmp_path_factory.mktemp("machine-invites"), [USER]) as (broker, machine):
        broker.add_user(GUEST, PASSWORD)
        yield broker, machine


def waiting(machine: Machine, session_id: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: next((p for p in machine.pending(USER) if p["session_id"] == session_id), None),
        15,
        f"the prompt for {session_id}",
    )
    return found


def status(machine: Machine) -> list[dict[str, Any]]:
    done = machine.cli(USER, "status", "--json")
    assert done.returncode == 0, done.stderr
    sessions: list[dict[str, Any]] = json.loads(done.stdout)["sessions"]
    return sessions


def test_the_signed_in_user_allows_sees_and_removes_an_observer(
    world: tuple[Broker, Machine],
) -> None:
    broker, machine = world
    owner, guest = Desk.login(broker, TECH, TECH_PW), Desk.login(broker, GUEST, PASSWORD)
    try:
        session_id = owner.request(machine.agent_id, "shell").json()["id"]
        waiting(machine, session_id)
        assert machine.cli(USER, "allow", session_id).returncode == 0
        owner.wait_state(session_id, "active")
        asyncio.run(_observed(broker, machine, owner, guest, session_id))
    finally:
        owner.close()
        guest.close()
    done = broker_cli("audit", "export", "--data", str(broker.data))
    removed = [
        r for r in map(json.loads, done.stdout.splitlines()) if r["type"] == "participant.removed"
    ]
    assert removed and removed[-1]["details"]["invitee"] == GUEST


async def _observed(
    broker: Broker, machine: Machine, owner: Desk, guest: Desk, session_id: str
) -> None:
    async with terminal(owner, session_id) as mine:
        asked = owner.client.post(
            f"/api/v1/sessions/{session_id}/invite", json={"username": GUEST, "mode": "observe"}
        )
        assert asked.status_code == 201, asked.text
        invitation = asked.json()
        prompt = await asyncio.to_thread(waiting, machine, invitation["id"])
        assert prompt["joins"] == session_id and prompt["phrase"] == invitation["phrase"]
        said = await asyncio.to_thread(machine.cli, USER, "pending")
        assert f"({GUEST}) also wants to join session {session_id}" in said.stdout
        allowed = await asyncio.to_thread(machine.cli, USER, "allow", invitation["id"])
        assert allowed.returncode == 0, allowed.stderr
        async with terminal(guest, session_id) as theirs:

            def joined() -> bool:
                return any(
                    s["session_id"] == invitation["id"] and s["connected"] for s in status(machine)
                )

            await asyncio.to_thread(wait_for, joined, 15, "the observer's channel")
            await mine.send("echo U$(id -un)U\n")
            await theirs.expect(f"U{USER}U".encode(), timeout=20)
            await theirs.send("echo GUESTTYPED-$((4*4))\n")
            await mine.send("echo fence-$((5+5))\n")
            await theirs.expect(b"fence-10", timeout=20)
            assert b"GUESTTYPED-16" not in mine.seen + theirs.seen
            listed = await asyncio.to_thread(machine.cli, USER, "status")
            assert f"({GUEST}): " in listed.stdout and "observer" in listed.stdout
            gone = await asyncio.to_thread(machine.cli, USER, "remove", session_id, GUEST)
            assert gone.returncode == 0, gone.stderr
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(theirs.ws.recv(), 15)
        await mine.send("echo still-$((3*3))\n")
        await mine.expect(b"still-9", timeout=20)
