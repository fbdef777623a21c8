"""Invitations (#18) through a real broker and a real agent: two technicians in one shell.

The owner (alice) invites bob to observe and carol to take control; the PC user
allows each through ``allowhelp-agent allow``; bob sees the shell and cannot type,
carol can; dave, never invited, is refused and that is on the record; the user
removes bob, alice revokes carol.
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
    wait_pending,
)
from terminalkit import Terminal, consented_shell, refused, terminal

BOB, CAROL, DAVE = "ahobsbob", "ahobscarol", "ahobsdave"
PASSWORD = "a long test password 1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("invites")) as (_, broker, agent):
        for name in (BOB, CAROL, DAVE):
            broker.add_user(name, PASSWORD)
        yield broker, agent


def records(broker: Broker, kind: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in found if r["type"] == kind]


def allow_invitation(broker: Broker, agent: Agent, invitation: dict[str, Any]) -> dict[str, Any]:
    """The PC user allows it, and the broker has taken the answer: ``allow`` returns
    once the agent sent it, and an invitee attaching before the broker read it is
    refused (403), as it should be (a race CI lost once)."""
    pending = wait_pending(agent, invitation["id"])
    said = agent_call(agent, "pending").stdout  # what the user reads on the PC
    assert (
        f"({invitation['username']}) also wants to join session {invitation['session_id']}" in said
    )
    assert invitation["phrase"] in said
    assert agent_call(agent, "allow", invitation["id"]).returncode == 0
    wait_for(
        lambda: any(invitation["id"] in json.dumps(r) for r in records(broker, "invite.granted")),
        15,
        "the broker to take the PC user's answer",
    )
    return pending


def has_joined(agent: Agent, invitation_id: str) -> None:
    """The invitee's channel has joined the shell on the PC (output reaches them
    from then on, not before)."""

    def connected() -> bool:
        grants = agent_status(agent)["sessions"]
        return any(g["session_id"] == invitation_id and g["connected"] for g in grants)

    wait_for(connected, 15, "the invitee's channel to join the shell")


async def closed(term: Terminal) -> None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(term.ws.recv(), 15)


async def test_two_technicians_in_one_shell(setup: tuple[Broker, Agent]) -> None:
    broker, agent = setup
    alice, bob, carol, dave = (
        Desk.login(broker, TECH, TECH_PW),
        Desk.login(broker, BOB, PASSWORD),
        Desk.login(broker, CAROL, PASSWORD),
        Desk.login(broker, DAVE, PASSWORD),
    )
    try:
        session_id = await asyncio.to_thread(consented_shell, alice, agent)
        async with terminal(alice, session_id) as owner:
            url = f"/api/v1/sessions/{session_id}/invite"
            # only the owner invites; bad modes and unknown people are refused
            assert (
                bob.client.post(url, json={"username": CAROL, "mode": "observe"}).status_code == 403
            )
            assert alice.client.post(url, json={"username": BOB, "mode": "root"}).status_code == 400
            assert (
                alice.client.post(url, json={"username": "nobody", "mode": "observe"}).status_code
                == 404
            )
            asked = alice.client.post(url, json={"username": BOB, "mode": "observe"})
            assert asked.status_code == 201, asked.text
            invitation = asked.json()
            # before the PC user allows: bob cannot attach, and that is audited
            assert await refused(bob, session_id) == 403
            # bob sees the session in his list, with his own phrase
            listed = {s["id"]: s for s in bob.client.get("/api/v1/sessions").json()}
            assert listed[session_id]["phrase"] == invitation["phrase"]
            pending = allow_invitation(broker, agent, invitation)
            assert pending["joins"] == session_id and pending["username"] == BOB
            assert pending["phrase"] == invitation["phrase"] != alice.session(session_id)["phrase"]
            async with terminal(bob, session_id) as observer:
                await asyncio.to_thread(has_joined, agent, invitation["id"])
                await owner.send("echo seen-by-$((6*7))\n")
                await observer.expect(b"seen-by-42")
                await observer.send("echo BOBTYPED-$((3*3))\n")
                await owner.send("echo fence-$((2*2))\n")
                await owner.expect(b"fence-4")
                await observer.expect(b"fence-4")
                assert b"BOBTYPED-9" not in owner.seen + observer.seen
                # never invited: refused and audited
                assert await refused(dave, session_id) == 403
                refusals = records(broker, "participant.refused")
                assert {r["actor"] for r in refusals} >= {f"technician:{BOB}", f"technician:{DAVE}"}
                # carol in control mode may type
                asked = alice.client.post(url, json={"username": CAROL, "mode": "control"})
                assert asked.status_code == 201, asked.text
                allow_invitation(broker, agent, asked.json())
                async with terminal(carol, session_id) as controller:
                    await asyncio.to_thread(has_joined, agent, asked.json()["id"])
                    await controller.send("echo carol-$((5*5))\n")
                    await owner.expect(b"carol-25")
                    await observer.expect(b"carol-25")
                    status = agent_call(agent, "status")
                    assert status.returncode == 0, status.stderr
                    assert f"({BOB})" in status.stdout and f"({CAROL})" in status.stdout
                    assert "observer" in status.stdout and "control" in status.stdout
                    # the PC user removes bob: his connection closes
                    removed = agent_call(agent, "remove", session_id, BOB)
                    assert removed.returncode == 0, removed.stderr
                    await closed(observer)
                    # the owner revokes carol: hers closes
                    answer = alice.client.delete(f"/api/v1/sessions/{session_id}/invite/{CAROL}")
                    assert answer.status_code == 200, answer.text
                    await closed(controller)
                # the owner's shell goes on
                await owner.send("echo still-$((1+1))\n")
                await owner.expect(b"still-2")
                # revoked and removed people stay out; others cannot see or revoke
                assert await refused(carol, session_id) == 403
                assert await refused(bob, session_id) == 403
                assert bob.client.get(f"/api/v1/sessions/{session_id}/invites").status_code == 404
                assert bob.client.delete(f"{url}/{CAROL}").status_code == 403
                # the PC user says no: the invitee stays out
                asked = alice.client.post(url, json={"username": DAVE, "mode": "control"})
                assert asked.status_code == 201, asked.text
                wait_pending(agent, asked.json()["id"])
                assert agent_call(agent, "deny", asked.json()["id"]).returncode == 0
                await asyncio.to_thread(
                    wait_for, lambda: records(broker, "invite.denied"), 15, "the denial"
                )
                assert await refused(dave, session_id) == 403
                await owner.send("echo after-$((2+5))\n")
                await owner.expect(b"after-7")
        # after the end, the invitees' pages still load it (and see it is over)
        assert bob.wait_state(session_id, "ended")["invitation"]["state"] == "removed"
        assert carol.wait_state(session_id, "ended")["invitation"]["state"] == "revoked"
        assert dave.session(session_id)["invitation"]["state"] == "denied"
        removal = records(broker, "participant.removed")
        assert removal[-1]["actor"].startswith("user@")
        assert removal[-1]["details"]["invitee"] == BOB
        revoked = records(broker, "invite.revoked")
        assert revoked[-1]["details"]["invitee"] == CAROL
        joined = records(broker, "participant.joined")
        assert {(r["details"]["invitee"], r["details"]["mode"]) for r in joined} == {
            (BOB, "observe"),
            (CAROL, "control"),
        }
        granted = records(broker, "invite.granted")
        assert len(granted) == 2 and all(r["actor"].startswith("user@") for r in granted)
        gone = agent_call(agent, "remove", session_id, CAROL)
        assert gone.returncode != 0 and CAROL in gone.stderr
    finally:
        for desk in (alice, bob, carol, dave):
            desk.close()


async def test_an_invitee_waits_for_the_owner_and_sees_the_shells_last_words(
    setup: tuple[Broker, Agent],
) -> None:
    """Allowed before the owner opened the shell: refused (nothing records it yet),
    and their view says ``owner_here`` false until the owner's terminal runs. Then
    the owner's shell prints a lot and exits at once: the invitee sees its last line
    (recorded, kept, sent) before their connection ends."""
    broker, agent = setup
    alice, carol = Desk.login(broker, TECH, TECH_PW), Desk.login(broker, CAROL, PASSWORD)
    try:
        session_id = await asyncio.to_thread(consented_shell, alice, agent)
        url = f"/api/v1/sessions/{session_id}/invite"
        asked = alice.client.post(url, json={"username": CAROL, "mode": "observe"})
        assert asked.status_code == 201, asked.text
        allow_invitation(broker, agent, asked.json())
        assert carol.session(session_id)["owner_here"] is False
        assert await refused(carol, session_id) == 403
        refusal = records(broker, "participant.refused")[-1]
        assert "has not opened its shell yet" in refusal["details"]["error"]
        async with terminal(alice, session_id) as owner:
            await owner.send("echo ready-$((2*3))\n")
            await owner.expect(b"ready-6")
            listed = {s["id"]: s for s in carol.client.get("/api/v1/sessions").json()}
            assert listed[session_id]["owner_here"] is True
            assert carol.session(session_id)["owner_here"] is True
            async with terminal(carol, session_id) as observer:
                await asyncio.to_thread(has_joined, agent, asked.json()["id"])
                await owner.send("seq 1 40000 | sed 's/^/line-/'; exit\n")
                await owner.expect(b"line-40000")
                await observer.expect(b"line-40000", timeout=20)
                await closed(observer)
        alice.wait_state(session_id, "ended")
    finally:
        alice.close()
        carol.close()
