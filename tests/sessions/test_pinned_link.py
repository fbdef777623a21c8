"""A session's messages go to the tunnel whose Hello it was judged on, or nowhere
(review L5; docs/design.md "Nothing may cache a LiveAgent's link across an await").

The registry's record of an agent outlives its tunnels (its doorbell keeps it
online), so a request that held the record across an await could send on a newer
tunnel than the one it decided on. Here the tunnel is swapped while the request's
``session.awaiting_consent`` record waits for a held audit log: the consent
request must not land on the new tunnel, and the session ends on the record.
A real broker, the agent's own key on both tunnels (``bellkit.scripted_agent``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from bellkit import doorbell, doorbell_client, hello, scripted_agent

from harness import TECH, TECH_PW, Agent, Broker, Desk, Fleet, audit_locked, online, wait_for


@pytest.fixture
def agent(staffed: Fleet, broker: Broker) -> Agent:
    enrolled = staffed.agent(f"agent{len(staffed.agents)}")
    done = enrolled.enroll(broker.token())
    assert done.returncode == 0, done.stderr
    return enrolled


async def off_loop(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def newest_session(desk: Desk, agent_id: str) -> dict[str, Any]:
    listed: list[dict[str, Any]] = desk.client.get("/api/v1/sessions").json()
    return next(s for s in listed if s["agent_id"] == agent_id)


async def test_a_consent_request_never_goes_to_a_newer_tunnel(broker: Broker, agent: Agent) -> None:
    async with scripted_agent(agent, hello(agent.agent_id, "need")) as first:
        token = str((await first.first("doorbell.key"))["token"])
    await off_loop(wait_for, lambda: not online(broker, agent.agent_id), 15, "offline")
    desk = await off_loop(Desk.login, broker, TECH, TECH_PW)
    said = hello(agent.agent_id, "need")  # each tunnel is sent a key: it said hello
    try:
        async with (
            doorbell_client(broker) as client,
            doorbell(client, agent.agent_id, token, hello(agent.agent_id, "have")) as bell,
            contextlib.AsyncExitStack() as stack,
        ):
            assert await bell.line() == {"type": "beat"}
            asking = asyncio.create_task(off_loop(desk.request, agent.agent_id))
            assert await bell.next_ring() == {"type": "ring", "reason": "consent.request"}
            with audit_locked(broker):  # the request's next record waits
                async with scripted_agent(agent, said) as judged:
                    await judged.first("doorbell.key")  # its Hello is in: the request goes on
                # that tunnel went; a newer one comes and says hello while the record waits
                newer = await stack.enter_async_context(scripted_agent(agent, said))
                await newer.first("doorbell.key")
            # released inside the writer's 2 s busy timeout: the record is written
            answer = await asyncio.wait_for(asking, 20)
            assert answer.status_code == 502, answer.text
            session = await off_loop(newest_session, desk, agent.agent_id)
            ended = await off_loop(desk.wait_state, session["id"], "ended")
            assert ended["end_reason"] in ("agent_lost", "error")
            assert judged.all("consent.request") == []  # it was gone before the send
            # the newer tunnel is the agent's now: a new request lands there, in order
            # on its one channel after anything sent before it
            again = await off_loop(desk.request, agent.agent_id)
            assert again.status_code == 201, again.text
            asked = await newer.first("consent.request")
            assert asked["session_id"] == again.json()["id"]
            assert [m["session_id"] for m in newer.all("consent.request")] == [asked["session_id"]]
    finally:
        desk.close()
