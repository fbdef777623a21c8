"""Invitations (#18) into a session another node runs (#21, docs/multinode.md "Routing").

Real nodes A and B on one real PostgreSQL, each with ``--node-listen``, a real agent
on B. Alice, logged in on A, runs a shell on B's agent through A and invites Bob
(asked through A, kept by B); Bob, logged in on A too, is relayed to B, which lets
him in once the PC user allowed it: he sees the shell and his keys are dropped.
Dave, never invited, logged in on A, is relayed as well and refused by B, whose
record says so (``participant.refused``): node A decides nothing about who may join.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    agent_call,
    agent_status,
    broker_cli,
    running_fleet,
    wait_for,
    wait_pending,
)
from terminalkit import Terminal

RELAY = ["--node-listen", "127.0.0.1:0"]
BOB, DAVE = "ahrelaybob", "ahrelaydave"
PASSWORD = "a long test password 1"


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)
    return fleet.broker(name, store=pg_url, extra=list(RELAY)).start()


def _node_id(broker: Broker) -> str:
    return (broker.data / "node.id").read_text().strip()


def _records(pg_url: str, target: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r.get("target") == target]


@asynccontextmanager
async def _terminal(desk: Desk, session_id: str) -> AsyncIterator[Terminal]:
    async with connect(
        desk.ws_url(session_id) + "?cols=100&rows=30",
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as ws:
        yield Terminal(ws)


async def _refused(desk: Desk, session_id: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with _terminal(desk, session_id):
            pass
    return caught.value.response.status_code


def _invitee_views(desk: Desk, session_id: str) -> list[dict[str, Any]]:
    """The session as ``desk``'s session list and session page show it."""
    page = desk.client.get(f"/api/v1/sessions/{session_id}")
    assert page.status_code == 200, page.text
    listed = desk.client.get("/api/v1/sessions")
    assert listed.status_code == 200, listed.text
    rows = [r for r in listed.json() if r["id"] == session_id]
    assert len(rows) == 1, listed.json()
    return [rows[0], page.json()]


def _joined(agent: Agent, invitation_id: str) -> bool:
    """The invitee's channel has joined the shell on the PC."""
    grants = agent_status(agent)["sessions"]
    return any(g["session_id"] == invitation_id and g["connected"] for g in grants)


async def test_an_invitee_on_node_a_joins_a_session_node_b_runs(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url, broker_args=tuple(RELAY)) as (fleet, b, agent):
        for name in (BOB, DAVE):
            b.add_user(name, PASSWORD)
        a = _node(fleet, b, pg_url, "node-a")
        wait_for(
            lambda: any(r["online"] for r in a.agents(TECH, TECH_PW) if r["id"] == agent.agent_id),
            10,
            "node A to list the agent online",
        )
        alice, bob, dave = (
            Desk.login(a, TECH, TECH_PW),
            Desk.login(a, BOB, PASSWORD),
            Desk.login(a, DAVE, PASSWORD),
        )
        answer = alice.request(agent.agent_id)
        assert answer.status_code == 201, answer.text
        session_id = str(answer.json()["id"])
        wait_pending(agent, session_id)
        assert agent_call(agent, "allow", session_id).returncode == 0
        alice.wait_state(session_id, "active")
        async with _terminal(alice, session_id) as owner:
            # The owner invites through A: B (running the session) asks the PC user.
            url = f"/api/v1/sessions/{session_id}/invite"
            asked = alice.client.post(url, json={"username": BOB, "mode": "observe"})
            assert asked.status_code == 201, asked.text
            invitation = asked.json()
            listed = alice.client.get(f"/api/v1/sessions/{session_id}/invites")
            assert listed.status_code == 200, listed.text
            assert [i["username"] for i in listed.json()] == [BOB]
            # Not allowed yet: B refuses Bob, through A.
            assert await _refused(bob, session_id) == 403
            pending = wait_pending(agent, invitation["id"])
            assert pending["joins"] == session_id and pending["username"] == BOB
            assert agent_call(agent, "allow", invitation["id"]).returncode == 0
            # Bob's pages on A show B's invitation: the session list and the session
            # page, with the owner here (A knows no invitation: B answers).
            mine = await asyncio.to_thread(_invitee_views, bob, session_id)
            assert [v["owner_here"] for v in mine] == [True, True], mine
            assert {v["invitation"]["username"] for v in mine} == {BOB}, mine
            # Dave, never invited, sees neither, through A.
            assert dave.client.get(f"/api/v1/sessions/{session_id}").status_code == 404
            assert session_id not in {r["id"] for r in dave.client.get("/api/v1/sessions").json()}
            async with _terminal(bob, session_id) as observer:
                await asyncio.to_thread(
                    wait_for,
                    lambda: _joined(agent, invitation["id"]),
                    15,
                    "the invitee's channel to join the shell",
                )
                await owner.send("echo seen-by-$((6*7))\n")
                await observer.expect(b"seen-by-42", timeout=30)
                # An observer's keys are dropped (by B's participant relay).
                await observer.send("echo BOBTYPED-$((3*3))\n")
                await owner.send("echo fence-$((2*2))\n")
                await owner.expect(b"fence-4", timeout=30)
                await observer.expect(b"fence-4", timeout=30)
                assert b"BOBTYPED-9" not in owner.seen + observer.seen
                # Dave, never invited, is relayed too, refused by B, and B says so.
                assert await _refused(dave, session_id) == 403
                # The owner revokes Bob's invitation through A: his page is closed.
                revoked = alice.client.delete(f"{url}/{BOB}")
                assert revoked.status_code == 200, revoked.text
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(observer.ws.recv(), 15)
            assert await _refused(bob, session_id) == 403
        assert alice.wait_state(session_id, "ended")["end_reason"] == "technician"
        # Once it has ended, Bob's page on A still shows it as one node would: ended,
        # his invitation revoked (B keeps it; A knows none and asks B). Dave: nothing.
        ended = bob.client.get(f"/api/v1/sessions/{session_id}")
        assert ended.status_code == 200, ended.text
        page = ended.json()
        assert page["state"] == "ended" and page["owner_here"] is False, page
        assert page["invitation"]["username"] == BOB, page
        assert page["invitation"]["state"] == "revoked", page
        assert dave.client.get(f"/api/v1/sessions/{session_id}").status_code == 404
        records = _records(pg_url, session_id)
        refusals = [r for r in records if r["type"] == "participant.refused"]
        assert {r["actor"] for r in refusals} == {f"technician:{BOB}", f"technician:{DAVE}"}
        joined = [r for r in records if r["type"] == "participant.joined"]
        assert [(r["details"]["invitee"], r["details"]["mode"]) for r in joined] == [
            (BOB, "observe")
        ]
        # Each WebSocket through A is on A's record as relayed, the stranger's too.
        relayed = [r for r in records if r["type"] == "session.relayed"]
        assert {r["actor"] for r in relayed} == {
            f"technician:{TECH}",
            f"technician:{BOB}",
            f"technician:{DAVE}",
        }
        assert {(r["details"]["from_node"], r["details"]["to_node"]) for r in relayed} == {
            (_node_id(a), _node_id(b))
        }
        for desk in (alice, bob, dave):
            desk.close()
    done = broker_cli("audit", "verify", "--store", pg_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
