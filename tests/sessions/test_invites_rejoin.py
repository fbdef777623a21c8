"""Invitees (#18) who join late, come back, and leave with the session: a real broker
and a real agent.

- An invitee who joins a shell that has already printed gets its recent output
  first (the broker's tail, ``relay/scrollback.py``), as the owner sees it.
- An allowed invitee whose page reloads or whose network drops attaches again
  while the invitation stands, each time audited as a join; one removed by the
  PC user or revoked by the owner cannot.
- When the session ends, every invitee's connection has stopped and their
  leaving is on the record before the session's end record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    agent_status,
    broker_cli,
    running_fleet,
    wait_for,
)
from terminalkit import Terminal, consented_shell, invited, refused, terminal

ANN, BEN = "ahinvann", "ahinvben"
PASSWORD = "a long test password 3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("invites-rejoin")) as (_, broker, agent):
        for name in (ANN, BEN):
            broker.add_user(name, PASSWORD)
        yield broker, agent


@pytest.fixture
def desks(setup: tuple[Broker, Agent]) -> Iterator[tuple[Desk, Desk, Desk]]:
    broker, _ = setup
    owner, ann, ben = (
        Desk.login(broker, TECH, TECH_PW),
        Desk.login(broker, ANN, PASSWORD),
        Desk.login(broker, BEN, PASSWORD),
    )
    try:
        yield owner, ann, ben
    finally:
        for desk in (owner, ann, ben):
            desk.close()


def records(broker: Broker, kind: str | None = None) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in found if kind is None or r["type"] == kind]


def connected(agent: Agent, invitation_id: str, now: bool = True) -> None:
    """The invitee's channel is (or is no longer) joined to the shell on the PC."""

    def check() -> bool:
        grants = agent_status(agent)["sessions"]
        return any(g["session_id"] == invitation_id and g["connected"] is now for g in grants)

    wait_for(check, 15, f"the invitee's channel to be {'open' if now else 'closed'} on the PC")


async def closed(term: Terminal) -> None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(term.ws.recv(), 15)


async def test_a_late_invitee_sees_what_the_shell_printed_before_they_joined(
    setup: tuple[Broker, Agent], desks: tuple[Desk, Desk, Desk]
) -> None:
    _, agent = setup
    owner_desk, ann, _ = desks
    session_id = await asyncio.to_thread(consented_shell, owner_desk, agent)
    async with terminal(owner_desk, session_id) as owner:
        await owner.send("echo early-$((6*7)); echo second-$((2*8))\n")
        await owner.expect(b"second-16")
        invitation = await asyncio.to_thread(invited, owner_desk, agent, session_id, ANN, "observe")
        async with terminal(ann, session_id) as observer:
            # nothing is printed after the join: what ann sees came from before it
            await observer.expect(b"early-42")
            await observer.expect(b"second-16")
            await asyncio.to_thread(connected, agent, invitation["id"])
            await owner.send("echo later-$((3*3))\n")
            await observer.expect(b"later-9")
            assert observer.seen.count(b"early-42") == owner.seen.count(b"early-42")
    owner_desk.wait_state(session_id, "ended")


async def test_an_allowed_invitee_attaches_again_a_removed_or_revoked_one_cannot(
    setup: tuple[Broker, Agent], desks: tuple[Desk, Desk, Desk]
) -> None:
    broker, agent = setup
    owner_desk, ann, ben = desks
    session_id = await asyncio.to_thread(consented_shell, owner_desk, agent)
    async with terminal(owner_desk, session_id) as owner:
        ann_invite = await asyncio.to_thread(invited, owner_desk, agent, session_id, ANN, "control")
        ben_invite = await asyncio.to_thread(invited, owner_desk, agent, session_id, BEN, "observe")
        # ann's page loads, then reloads: the second connection works like the first
        async with terminal(ann, session_id) as first:
            await asyncio.to_thread(connected, agent, ann_invite["id"])
            await first.send("echo ann-one-$((1+1))\n")
            await owner.expect(b"ann-one-2")
        await asyncio.to_thread(connected, agent, ann_invite["id"], False)
        async with terminal(ann, session_id) as second:
            await asyncio.to_thread(connected, agent, ann_invite["id"])
            await second.send("echo ann-two-$((2+2))\n")
            await owner.expect(b"ann-two-4")
            await second.expect(b"ann-two-4")
            # her network drops without a close: a new connection replaces the dead one
            async with terminal(ann, session_id) as third:
                await closed(second)
                await asyncio.to_thread(connected, agent, ann_invite["id"])
                await third.send("echo ann-three-$((3+3))\n")
                await owner.expect(b"ann-three-6")
                # the owner revokes her: closed, and she stays out
                answer = owner_desk.client.delete(f"/api/v1/sessions/{session_id}/invite/{ANN}")
                assert answer.status_code == 200, answer.text
                await closed(third)
        assert await refused(ann, session_id) == 403
        # ben is removed by the PC user: closed, and he stays out
        async with terminal(ben, session_id) as watcher:
            await asyncio.to_thread(connected, agent, ben_invite["id"])
            removed = agent_call(agent, "remove", session_id, BEN)
            assert removed.returncode == 0, removed.stderr
            await closed(watcher)
        assert await refused(ben, session_id) == 403
        await owner.send("echo owner-on-$((4+4))\n")
        await owner.expect(b"owner-on-8")
    owner_desk.wait_state(session_id, "ended")
    mine = [r for r in records(broker) if r["target"] == session_id]
    joins = [r["details"] for r in mine if r["type"] == "participant.joined"]
    assert [(j["invitee"], j["connection"]) for j in joins] == [
        (ANN, 1),
        (ANN, 2),
        (ANN, 3),
        (BEN, 1),
    ]
    left = [r["details"] for r in mine if r["type"] == "participant.left"]
    assert [(d["invitee"], d["connection"], d["how"]) for d in left] == [
        (ANN, 1, "technician"),
        (ANN, 2, "replaced"),
    ]
    refusals = [r["actor"] for r in mine if r["type"] == "participant.refused"]
    assert refusals == [f"technician:{ANN}", f"technician:{BEN}"]


async def test_invitees_are_stopped_and_recorded_before_the_sessions_end_record(
    setup: tuple[Broker, Agent], desks: tuple[Desk, Desk, Desk]
) -> None:
    broker, agent = setup
    owner_desk, ann, ben = desks
    session_id = await asyncio.to_thread(consented_shell, owner_desk, agent)
    async with terminal(owner_desk, session_id) as owner:
        ann_invite = await asyncio.to_thread(invited, owner_desk, agent, session_id, ANN, "control")
        await asyncio.to_thread(invited, owner_desk, agent, session_id, BEN, "observe")
        async with terminal(ann, session_id) as controller:  # ben never attaches
            await asyncio.to_thread(connected, agent, ann_invite["id"])
            await controller.send("echo ann-here-$((5+5))\n")
            await owner.expect(b"ann-here-10")
            answer = owner_desk.client.post(f"/api/v1/sessions/{session_id}/end")
            assert answer.status_code == 200, answer.text
            await closed(controller)
            await closed(owner)
    owner_desk.wait_state(session_id, "ended")
    assert ann.session(session_id)["invitation"]["state"] == "ended"
    assert ben.session(session_id)["invitation"]["state"] == "ended"
    assert await refused(ann, session_id) == 403
    mine = [r for r in records(broker) if r["target"] == session_id]
    order = [(r["type"], r["details"].get("invitee")) for r in mine]
    left = order.index(("participant.left", ANN))
    assert left < order.index(("session.ended", None))
    assert mine[left]["actor"] == "system"
    assert mine[left]["details"]["how"] == "session_ended"
    assert mine[left]["details"]["bytes_to_agent"] > 0
    assert ("participant.left", BEN) not in order  # never connected: nothing to leave
