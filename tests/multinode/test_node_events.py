"""Console events across nodes (LISTEN/NOTIFY, store/pg_events.py): a technician on node B
sees what happens to their session on node A; another technician there does not."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from harness import TECH, TECH_PW, Broker, Desk, Fleet, agent_call, running_fleet, wait_pending
from wallkit import Console, ws_connect

BOB, BOB_PW = "bob", "bob password 1234"


def _second_node(fleet: Fleet, first: Broker, pg_url: str) -> Broker:
    data = fleet.root / "node-b"
    data.mkdir(mode=0o700)
    for name in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(first.data / name, data / name)
    return fleet.broker("node-b", store=pg_url).start()


async def _session_event(ws: ClientConnection, technician: str) -> dict[str, Any]:
    """The next session event on this socket, and whose session it is."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if message.get("type") == "session":
            session: dict[str, Any] = message["session"]
            assert session["technician"] == technician, message  # never another's
            return session


async def test_session_events_reach_the_technician_on_another_node(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url) as (fleet, node_a, agent):
        node_a.add_user(BOB, BOB_PW)
        node_b = _second_node(fleet, node_a, pg_url)
        alice_b = Console.login(node_b, TECH, TECH_PW)
        bob_b = Console.login(node_b, BOB, BOB_PW)
        ws_alice = await ws_connect(node_b, "/api/v1/events", origin=node_b.url,
                                    cookie=alice_b.cookie)  # fmt: skip
        ws_bob = await ws_connect(node_b, "/api/v1/events", origin=node_b.url, cookie=bob_b.cookie)
        async with ws_alice, ws_bob:
            for ws in (ws_alice, ws_bob):
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
            # Alice asks on node A; the PC (on node A) refuses.
            alice_a = await asyncio.to_thread(Desk.login, node_a, TECH, TECH_PW)
            asked = (await asyncio.to_thread(alice_a.request, agent.agent_id)).json()
            seen = await _session_event(ws_alice, TECH)
            assert seen["id"] == asked["id"]
            await asyncio.to_thread(wait_pending, agent, asked["id"])
            assert (await asyncio.to_thread(agent_call, agent, "deny", asked["id"])).returncode == 0
            while seen["state"] != "denied":
                seen = await _session_event(ws_alice, TECH)
            # Bob's own request is the first session event Bob's socket gets: none of Alice's.
            bob_a = await asyncio.to_thread(Desk.login, node_a, BOB, BOB_PW)
            mine = (await asyncio.to_thread(bob_a.request, agent.agent_id)).json()
            assert (await _session_event(ws_bob, BOB))["id"] == mine["id"]
            for desk in (alice_a, bob_a):
                desk.close()
        alice_b.close()
        bob_b.close()
