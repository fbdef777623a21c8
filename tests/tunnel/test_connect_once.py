"""One ``agent.connected`` per offline → online, whatever comes at once (review L4).

A doorbell and an SSH tunnel of an offline agent (or two tunnels) that arrive at
the same instant both used to find it offline, both write ``agent.connected``,
and leave one ``agent.disconnected`` after them. The registry now lets only the
first write its record (``AgentRegistry.arrive``); the rest wait for it and join
an agent that is online. The pure interleavings first, then a real broker with
its audit log held so that both connects are in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import pytest
from bellkit import (
    DOORBELL,
    audit_records,
    authorization,
    body,
    doorbell_client,
    hello,
    scripted_agent,
)

from allowhelp.broker.audit.connectivity import ConnectivityAudit, ConnectRecorded
from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.tunnel.agents import ONLINE, AgentRegistry
from allowhelp.broker.tunnel.doorbell import Bell
from allowhelp.broker.tunnel.link import AgentLink
from harness import ADMIN, ADMIN_PW, Agent, Broker, Desk, Fleet, audit_locked, online, wait_for

AGENT = "a-" + "c" * 20
HELLO = hello(AGENT, "have")

# Between "both connects were sent" and "the lock goes": no outside fact says the
# broker queued a record, so a short grace, well inside the writer's 2 s busy
# timeout (a connect that waits longer is refused, which the test would see).
GRACE = 0.6


class Gate:
    """A connect record that is written when the test says, and counted."""

    def __init__(self, answer: ConnectRecorded = "chained") -> None:
        self.calls = 0
        self.answer = answer
        self.open = asyncio.Event()

    async def __call__(self) -> ConnectRecorded:
        self.calls += 1
        await self.open.wait()
        return self.answer


class _Link:
    """Stands for an SSH link (the registry only closes it)."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def link() -> AgentLink:
    return cast(AgentLink, _Link())


async def test_two_arrivals_at_once_make_one_record_and_both_join() -> None:
    registry = AgentRegistry()
    gate = Gate()
    first = asyncio.create_task(registry.arrive(AGENT, gate))
    second = asyncio.create_task(registry.arrive(AGENT, gate))
    await asyncio.sleep(0)  # both have looked: the agent is offline
    gate.open.set()
    assert await first == "chained"
    registry.attach(AGENT, link(), "ssh")  # the first joins at once (no await between)
    assert await second == ONLINE  # the second finds it online: nothing to record
    registry.ring_in(AGENT, Bell(AGENT, "bell"), HELLO)
    assert gate.calls == 1


async def test_a_first_arrival_that_gives_up_lets_the_next_record_its_own() -> None:
    registry = AgentRegistry()
    gate = Gate()
    first = asyncio.create_task(registry.arrive(AGENT, gate))
    second = asyncio.create_task(registry.arrive(AGENT, gate))
    await asyncio.sleep(0)
    gate.open.set()
    assert await first == "chained"  # and its connection closed: it joins nothing
    assert await second == "chained"  # so the second's connect is a record of its own
    assert gate.calls == 2


async def test_a_refused_record_brings_nobody_online_and_the_next_tries_again() -> None:
    registry = AgentRegistry()
    refused = Gate("refused")
    refused.open.set()
    assert await registry.arrive(AGENT, refused) == "refused"
    assert not registry.online(AGENT)
    again = Gate()
    again.open.set()
    assert await registry.arrive(AGENT, again) == "chained"


async def test_an_agent_online_through_its_doorbell_is_not_recorded_again() -> None:
    registry = AgentRegistry()
    registry.ring_in(AGENT, Bell(AGENT, "bell"), HELLO)
    gate = Gate()
    assert await registry.arrive(AGENT, gate) == ONLINE and gate.calls == 0


async def test_a_replaced_tunnel_is_a_lost_link_not_a_connect() -> None:
    """A newer tunnel of an online agent: no record, and what ran over the older one
    (its sessions) is told it is lost before anyone hears the agent changed."""
    registry = AgentRegistry()
    heard: list[str] = []
    registry.subscribe_link_lost(lambda agent_id: heard.append(f"lost {agent_id}"))
    registry.subscribe(lambda agent_id, up: heard.append(f"online {agent_id} {up}"))
    older, newer = _Link(), _Link()
    newer_link = cast(AgentLink, newer)
    registry.attach(AGENT, cast(AgentLink, older), "ssh-1")
    gate = Gate()
    assert await registry.arrive(AGENT, gate) == ONLINE and gate.calls == 0
    registry.attach(AGENT, newer_link, "ssh-2")
    assert older.closed and not newer.closed
    assert heard == [f"online {AGENT} True", f"lost {AGENT}", f"online {AGENT} True"]
    assert registry.still(AGENT, cast(AgentLink, older)) is None
    assert registry.still(AGENT, newer_link) is newer_link


class _History:
    async def record_connectivity(
        self,
        agent_id: str,
        event: Literal["connected", "disconnected"],
        remote: str,
        reason: str,
        when: float,
    ) -> None:
        pass

    async def prune_connectivity(self, now: float) -> int:
        return 0


async def test_a_connect_right_after_a_disconnect_is_chained_after_it(tmp_path: Path) -> None:
    """The disconnect's record follows its fact in the background; a connect in the
    same instant waits for it, so the chain says disconnected, then connected."""
    path = tmp_path / "audit.sqlite3"
    audit = AuditLog.open(path)
    try:
        seen = ConnectivityAudit(audit, _History(), window=60, burst=10, online=lambda _: False)
        await seen.connected(AGENT, "p1")
        seen.disconnected(AGENT, "p1", "closed")
        await seen.connected(AGENT, "p2")
        await seen.stop()
    finally:
        audit.close()
    types = [r.type for r in read_records(path) if r.target == AGENT]
    assert types == ["agent.connected", "agent.disconnected", "agent.connected"]


# against a real broker


@pytest.fixture
def agent(staffed: Fleet, broker: Broker) -> Agent:
    enrolled = staffed.agent(f"agent{len(staffed.agents)}")
    done = enrolled.enroll(broker.token())
    assert done.returncode == 0, done.stderr
    return enrolled


def connectivity(broker: Broker, agent_id: str) -> list[str]:
    kinds = ("agent.connected", "agent.disconnected", "agent.flapping")
    records = audit_records(broker)
    return [r["type"] for r in records if r["type"] in kinds and r["target"] == agent_id]


async def off_loop(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@contextlib.asynccontextmanager
async def ringing(
    client: httpx.AsyncClient, agent_id: str, token: str, sent: asyncio.Event
) -> AsyncIterator[httpx.Response]:
    """A doorbell whose body says when it has all gone out (``sent``)."""
    whole = body(hello(agent_id, "have"))

    async def content() -> AsyncIterator[bytes]:
        yield whole
        sent.set()

    request = client.build_request(
        "POST",
        DOORBELL,
        headers={**authorization(agent_id, token), "content-type": "application/json"},
        content=content(),
    )
    response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


async def test_a_doorbell_and_a_tunnel_at_once_chain_one_connect(
    broker: Broker, agent: Agent
) -> None:
    async with scripted_agent(agent, hello(agent.agent_id, "need")) as heard:
        token = str((await heard.first("doorbell.key"))["token"])
    await off_loop(wait_for, lambda: not online(broker, agent.agent_id), 15, "offline")
    before = await off_loop(connectivity, broker, agent.agent_id)
    assert before == ["agent.connected", "agent.disconnected"]
    async with doorbell_client(broker) as client, contextlib.AsyncExitStack() as stack:
        sent = asyncio.Event()
        with audit_locked(broker):  # both connects wait for the log, together
            bell = asyncio.create_task(
                stack.enter_async_context(ringing(client, agent.agent_id, token, sent))
            )
            tunnel = await stack.enter_async_context(
                scripted_agent(agent, hello(agent.agent_id, "have"))
            )  # its handshake is done: the broker's connect is under way
            await asyncio.wait_for(sent.wait(), 10)
            await asyncio.sleep(GRACE)
        answer = await asyncio.wait_for(bell, 15)
        assert answer.status_code == 200
        assert not tunnel.closed.is_set()
        await off_loop(wait_for, lambda: online(broker, agent.agent_id), 15, "online")
    await off_loop(wait_for, lambda: not online(broker, agent.agent_id), 15, "offline again")
    # two records follow the key's pair: one connect, one disconnect (the old code
    # chained a second connect, or a flapping summary for it, and one disconnect)
    after = await off_loop(
        wait_for,
        lambda: len(now := connectivity(broker, agent.agent_id)[2:]) >= 2 and now,
        15,
        "the connect and the disconnect on the record",
    )
    assert after == ["agent.connected", "agent.disconnected"]


def history(broker: Broker, agent_id: str) -> list[dict[str, Any]]:
    desk = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        answer = desk.client.get(f"/api/v1/agents/{agent_id}/connectivity")
        assert answer.status_code == 200, answer.text
        events: list[dict[str, Any]] = answer.json()["history"]
        return events
    finally:
        desk.close()


async def test_a_tunnel_replacing_an_older_one_is_no_connect_but_is_in_the_history(
    broker: Broker, agent: Agent
) -> None:
    """The agent dials again while its older tunnel still stands (it gave up on it):
    online all along, so one ``agent.connected``; the history keeps both connects (the
    newest says which node holds the agent, docs/multinode.md)."""
    said = hello(agent.agent_id, "have")
    async with scripted_agent(agent, said) as older:
        await off_loop(wait_for, lambda: online(broker, agent.agent_id), 15, "online")
        async with scripted_agent(agent, said):
            await asyncio.wait_for(older.closed.wait(), 15)  # the broker dropped it
            await off_loop(
                wait_for,
                lambda: len(history(broker, agent.agent_id)) >= 2,
                15,
                "the second connect in the history",
            )
    await off_loop(wait_for, lambda: not online(broker, agent.agent_id), 15, "offline")
    chained = await off_loop(
        wait_for,
        lambda: len(now := connectivity(broker, agent.agent_id)) >= 2 and now,
        15,
        "the disconnect on the record",
    )
    assert chained == ["agent.connected", "agent.disconnected"]
    kept = [event["event"] for event in await off_loop(history, broker, agent.agent_id)]
    assert kept == ["disconnected", "connected", "connected"]  # newest first
