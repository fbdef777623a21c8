"""A doorbell on node B, a technician on node A (#19 with #21, docs/multinode.md).

Real nodes A and B with ``--node-listen`` on one real PostgreSQL. The agent's
doorbell stands on B: A lists it online on B (with what its doorbell's Hello
says), and A's technician's request, relayed to B, rings it there; the woken
tunnel (a real SSH link, ``bellkit.scripted_agent``) is then asked.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from bellkit import doorbell, doorbell_client, hello, scripted_agent

from harness import TECH, TECH_PW, Broker, Desk, Fleet, staffed_broker, wait_for

RELAY = ("--node-listen", "127.0.0.1:0")


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)
    return fleet.broker(name, store=pg_url, extra=list(RELAY)).start()


def _row(broker: Broker, agent_id: str) -> dict[str, Any]:
    return next(r for r in broker.agents(TECH, TECH_PW) if r["id"] == agent_id)


async def test_node_a_lists_and_rings_a_doorbell_held_by_node_b(
    tmp_path: Path, pg_url: str
) -> None:
    with staffed_broker(tmp_path, broker_args=RELAY, store=pg_url) as fleet:
        b = fleet.brokers[0]
        a = await asyncio.to_thread(_node, fleet, b, pg_url, "node-a")
        agent = fleet.agent()
        assert agent.enroll(b.token()).returncode == 0
        async with scripted_agent(agent, hello(agent.agent_id, "need")) as heard:
            token = str((await heard.first("doorbell.key"))["token"])
        said = hello(agent.agent_id, "have", user="bell-user")
        async with (
            doorbell_client(b) as client,
            doorbell(client, agent.agent_id, token, said) as bell,
        ):
            assert await bell.line() == {"type": "beat"}
            listed = await asyncio.to_thread(
                wait_for,
                lambda: (
                    (row := _row(a, agent.agent_id))["online"]
                    and row["signed_in"] == "bell-user"
                    and row
                ),
                15,
                "node A to list the doorbell's agent online on B",
            )
            assert listed["node"] == (b.data / "node.id").read_text().strip()
            desk = await asyncio.to_thread(Desk.login, a, TECH, TECH_PW)
            try:
                asking = asyncio.create_task(asyncio.to_thread(desk.request, agent.agent_id))
                assert await bell.next_ring() == {"type": "ring", "reason": "consent.request"}
                async with scripted_agent(agent, hello(agent.agent_id, "have")) as woken:
                    asked = await woken.first("consent.request")
                    answer = await asking
                    assert answer.status_code == 201, answer.text
                    assert asked["session_id"] == answer.json()["id"]
            finally:
                desk.close()
