"""An invitee is written as having left only after a join of theirs is on the record
(design.md's known gap on invitations, #18).

An invitee's new connection that waits for the one it replaces to stop has no join
on the record yet. If the session ends then, the session's end used to write a
``participant.left`` (``how: session_ended``) for it anyway: a leaving of a connection
that never joined. A real broker and a real agent; the audit log is held while the
replacement and the end happen, so both wait on the record together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_status,
    audit_locked,
    broker_cli,
    running_fleet,
    wait_for,
)
from terminalkit import consented_shell, invited, terminal

ANN, PASSWORD = "ahrevann", "a long test password 7"
# No outside fact says the end's record is queued behind the held log: a short grace,
# well inside the writer's 2 s busy timeout.
GRACE = 0.5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("invite-join-end")) as (_, broker, agent):
        broker.add_user(ANN, PASSWORD)
        yield broker, agent


def joined_on_pc(agent: Agent, invitation_id: str) -> bool:
    grants = agent_status(agent)["sessions"]
    return any(g["session_id"] == invitation_id and g["connected"] for g in grants)


def ann_records(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    return [
        r
        for r in found
        if r["target"] == session_id
        and (r["type"].startswith("participant.") or r["type"] == "session.ended")
    ]


async def test_a_connection_that_never_joined_is_not_written_as_having_left(
    setup: tuple[Broker, Agent],
) -> None:
    broker, agent = setup
    owner = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
    ann = await asyncio.to_thread(Desk.login, broker, ANN, PASSWORD)
    try:
        session_id = await asyncio.to_thread(consented_shell, owner, agent)
        invitation = await asyncio.to_thread(invited, owner, agent, session_id, ANN, "control")
        invitation_id = str(invitation["id"])
        async with terminal(owner, session_id) as mine:
            await mine.send("echo up-$((1+1))\n")  # its relay runs: others may join
            await mine.expect(b"up-2")
            await ann_joins_then_reloads(broker, agent, owner, ann, session_id, invitation_id)
        await asyncio.to_thread(owner.wait_state, session_id, "ended")
        mine_said = await asyncio.to_thread(ann_records, broker, session_id)
        said = [
            (r["type"], r["details"].get("connection"), r["details"].get("how")) for r in mine_said
        ]
        assert said == [
            ("participant.joined", 1, None),
            ("participant.left", 1, "replaced"),
            ("session.ended", None, None),
        ]
    finally:
        owner.close()
        ann.close()


async def ann_joins_then_reloads(
    broker: Broker, agent: Agent, owner: Desk, ann: Desk, session_id: str, invitation_id: str
) -> None:
    """Ann joins; then her page reloads while the log is held, and the session ends."""
    async with terminal(ann, session_id):
        await asyncio.to_thread(
            wait_for, lambda: joined_on_pc(agent, invitation_id), 15, "ann joined"
        )
        with audit_locked(broker):
            # a reloaded page: the new connection replaces the first, and waits for
            # it to stop (its leaving waits for the log) before its own join
            async with terminal(ann, session_id):
                await asyncio.to_thread(
                    wait_for,
                    lambda: not joined_on_pc(agent, invitation_id),
                    15,
                    "the first connection's channel closed on the PC",
                )
                ending = asyncio.create_task(
                    asyncio.to_thread(owner.client.post, f"/api/v1/sessions/{session_id}/end")
                )
                await asyncio.sleep(GRACE)  # the end stops everyone, its record waits
        answer = await asyncio.wait_for(ending, 20)
        assert answer.status_code == 200, answer.text
