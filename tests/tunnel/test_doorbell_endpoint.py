"""``POST /api/v1/agent/doorbell`` against a real broker process (uvicorn, TLS, SQLite).

The agent's SSH link is the real thing too (``bellkit.scripted_agent``: asyncssh,
reverse, the agent's own key) so the broker's key issuance, its wake and the
online/offline bookkeeping are seen from outside, as an agent sees them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from bellkit import (
    DOORBELL,
    audit_records,
    audit_text,
    authorization,
    body,
    database,
    doorbell,
    doorbell_client,
    hello,
    scripted_agent,
)

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    audit_locked,
    online,
    wait_for,
)


@pytest.fixture
def agent(staffed: Fleet, broker: Broker) -> Agent:
    """A freshly enrolled agent (never run: the tests speak for it)."""
    enrolled = staffed.agent(f"agent{len(staffed.agents)}")
    done = enrolled.enroll(broker.token())
    assert done.returncode == 0, done.stderr
    return enrolled


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    async with doorbell_client(broker) as http:
        yield http


async def ring(client: httpx.AsyncClient, headers: dict[str, str], content: Any) -> httpx.Response:
    """A doorbell expected to be refused: bounded, so a stream wrongly opened (which
    never ends by itself) fails the test instead of hanging it."""
    async with asyncio.timeout(15):
        return await client.post(DOORBELL, headers=headers, content=content, timeout=5)


async def issued_key(agent: Agent) -> str:
    """The key the broker sends after a Hello saying ``doorbell: need``."""
    async with scripted_agent(agent, hello(agent.agent_id, "need")) as heard:
        key = await heard.first("doorbell.key")
    token = str(key["token"])
    assert len(token) == 43
    return token


def stored_hash(broker: Broker, agent_id: str) -> str:
    with sqlite3.connect(f"file:{database(broker)}?mode=ro", uri=True) as db:
        row = db.execute("SELECT doorbell_hash FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return str(row[0])


def connectivity(broker: Broker, agent_id: str) -> list[dict[str, Any]]:
    kinds = ("agent.connected", "agent.disconnected", "agent.flapping")
    return [r for r in audit_records(broker) if r["type"] in kinds and r["target"] == agent_id]


def is_online(broker: Broker, agent_id: str) -> bool:
    return online(broker, agent_id)


async def off_loop(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_a_need_hello_gets_a_key_kept_only_as_its_sha256(
    broker: Broker, agent: Agent
) -> None:
    token = await issued_key(agent)
    assert stored_hash(broker, agent.agent_id) == hashlib.sha256(token.encode()).hexdigest()
    again = await issued_key(agent)  # a new key replaces the old one
    assert again != token
    assert stored_hash(broker, agent.agent_id) == hashlib.sha256(again.encode()).hexdigest()
    for text in (audit_text(broker), broker.log.read_text()):
        assert token not in text and again not in text


async def test_only_a_need_hello_gets_a_key(broker: Broker, agent: Agent) -> None:
    first, then = hello(agent.agent_id, "have"), hello(agent.agent_id, "need")
    async with scripted_agent(agent, first, then) as heard:
        # in order on one channel, one writer: a key for the first Hello would come
        # first, and the stored hash be the second's
        def settled() -> bool:
            keys = heard.all("doorbell.key")
            return (
                bool(keys)
                and stored_hash(broker, agent.agent_id)
                == hashlib.sha256(keys[-1]["token"].encode()).hexdigest()
            )

        await heard.first("doorbell.key")
        await off_loop(wait_for, settled, 15, "the last key stored")
        assert len(heard.all("doorbell.key")) == 1


async def test_a_wrong_key_is_401_audited_without_the_key(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    await issued_key(agent)
    guess = "G" * 20 + "uessedTokenNeverStored"  # 43 urlsafe chars
    answer = await ring(
        client,
        {**authorization(agent.agent_id, guess), "content-type": "application/json"},
        body(hello(agent.agent_id)),
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == "doorbell_key" and answer.headers["connection"] == "close"

    def refused() -> list[dict[str, Any]]:
        return [
            r
            for r in audit_records(broker)
            if r["type"] == "agent.refused" and r["target"] == agent.agent_id
        ]

    found = await off_loop(wait_for, refused, 15, "agent.refused on the chain")
    assert found[0]["details"]["reason"] == "doorbell"
    assert guess not in audit_text(broker) and guess not in broker.log.read_text()
    assert not await off_loop(is_online, broker, agent.agent_id)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer x",
        "Doorbell a-aaaaaaaaaaaaaaaaaaaa:" + "x" * 43,  # no such agent
        "Doorbell a-aaaaaaaaaaaaaaaaaaaa",
    ],
)
async def test_no_key_or_an_unknown_agent_is_401(
    client: httpx.AsyncClient, header: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["authorization"] = header
    answer = await ring(client, headers, b'{"hello": {}}')
    assert answer.status_code == 401 and answer.json()["code"] == "doorbell_key"


async def test_an_agent_that_never_got_a_key_cannot_ring_with_an_empty_one(
    client: httpx.AsyncClient, agent: Agent
) -> None:
    # its stored hash is "" until its first key: no key of any form matches it
    for token in ("", "x" * 43):
        answer = await ring(
            client,
            {**authorization(agent.agent_id, token), "content-type": "application/json"},
            body(hello(agent.agent_id)),
        )
        assert answer.status_code == 401


@pytest.mark.parametrize(
    ("content", "content_type", "why"),
    [
        (b"not json", "application/json", "not JSON"),
        (b'["hello"]', "application/json", "hello"),
        (b'{"hello": {"hostname": "pc"}}', "application/json", "missing"),
        (
            b'{"hello": {"hostname": "pc", "os": "L", "user": "u", "version": "1",'
            b' "doorbell": "always"}}',
            "application/json",
            "doorbell",
        ),
        (b'{"hello": {"type": "job.run"}}', "application/json", "type"),
        (b"[" * 50 + b"]" * 50, "application/json", "nested"),
        (b'{"hello": {}}', "text/plain", "application/json"),
    ],
)
async def test_a_bad_body_is_400_with_a_clear_error(
    client: httpx.AsyncClient, agent: Agent, content: bytes, content_type: str, why: str
) -> None:
    token = await issued_key(agent)
    answer = await ring(
        client,
        {**authorization(agent.agent_id, token), "content-type": content_type},
        content,
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "bad_hello" and why in answer.json()["message"]


async def test_a_body_over_16_kib_is_413_declared_or_chunked(
    client: httpx.AsyncClient, agent: Agent
) -> None:
    token = await issued_key(agent)
    headers = {**authorization(agent.agent_id, token), "content-type": "application/json"}
    big = b'{"hello": {"hostname": "' + b"h" * 17000 + b'"}}'
    answer = await ring(client, headers, big)
    assert answer.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    answer = await ring(client, headers, chunks())
    assert answer.status_code == 413 and answer.json()["code"] == "too_large"


async def test_the_stream_beats_at_once_and_lists_the_agent_online(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    token = await issued_key(agent)
    await off_loop(wait_for, lambda: not is_online(broker, agent.agent_id), 15, "offline")
    said = hello(agent.agent_id, "have", user="doorbell-user")
    async with doorbell(client, agent.agent_id, token, said) as stream:
        assert stream.response.status_code == 200
        headers = stream.response.headers
        assert headers["content-type"] == "application/x-ndjson"
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert await stream.line(timeout=5) == {"type": "beat"}  # flushed at once
        rows = await off_loop(broker.agents, ADMIN, ADMIN_PW)
        row = next(r for r in rows if r["id"] == agent.agent_id)
        assert row["online"] and row["signed_in"] == "doorbell-user"  # its Hello's fields
    await off_loop(wait_for, lambda: not is_online(broker, agent.agent_id), 15, "offline again")


async def test_a_request_rings_and_the_ssh_link_comes_and_goes_without_going_offline(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    token = await issued_key(agent)  # one SSH link: connected, disconnected
    await off_loop(wait_for, lambda: len(connectivity(broker, agent.agent_id)) == 2, 15, "2")
    desk = await off_loop(Desk.login, broker, TECH, TECH_PW)
    try:
        async with doorbell(client, agent.agent_id, token, hello(agent.agent_id, "have")) as bell:
            assert await bell.line() == {"type": "beat"}
            asking = asyncio.create_task(off_loop(desk.request, agent.agent_id))
            assert await bell.next_ring() == {"type": "ring", "reason": "consent.request"}
            assert not asking.done()  # the request waits for the woken agent
            async with scripted_agent(agent, hello(agent.agent_id, "have")) as heard:
                asked = await heard.first("consent.request")
                answer = await asking
                assert answer.status_code == 201, answer.text
                assert asked["session_id"] == answer.json()["id"]
                assert answer.json()["state"] == "awaiting_consent"
            # the tunnel went: its session is lost, the agent stays online by its doorbell
            ended = await off_loop(desk.wait_state, answer.json()["id"], "ended")
            assert ended["end_reason"] == "agent_lost"
            assert await off_loop(is_online, broker, agent.agent_id)
            records = connectivity(broker, agent.agent_id)
            assert [r["type"] for r in records] == [
                "agent.connected",
                "agent.disconnected",
                "agent.connected",  # the doorbell; the woken tunnel is no connect
            ]
            assert "(doorbell)" in records[2]["details"]["remote"]
            assert await bell.line(timeout=25) == {"type": "beat"}  # still standing
    finally:
        desk.close()

    def gone() -> bool:
        return [r["type"] for r in connectivity(broker, agent.agent_id)][-1:] == [
            "agent.disconnected"
        ]

    await off_loop(wait_for, gone, 15, "the doorbell's disconnect on the chain")
    assert not await off_loop(is_online, broker, agent.agent_id)
    assert len(connectivity(broker, agent.agent_id)) == 4


async def test_a_rung_agent_that_never_comes_is_a_502_and_an_ended_session_on_the_record(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    """The doorbell is up and rung, but no tunnel comes (the PC's agent cannot
    start): after the broker's wake timeout (20 s) the technician gets a clear 502,
    the session ends with that error on the chain, and the PC stays online."""
    token = await issued_key(agent)
    await off_loop(wait_for, lambda: not is_online(broker, agent.agent_id), 15, "offline")
    desk = await off_loop(Desk.login, broker, TECH, TECH_PW)
    try:
        async with doorbell(client, agent.agent_id, token, hello(agent.agent_id, "have")) as bell:
            assert await bell.line() == {"type": "beat"}
            payload = {"agent_id": agent.agent_id, "kind": "shell", "reason": "printer broken"}
            asking = asyncio.create_task(
                asyncio.to_thread(desk.client.post, "/api/v1/sessions", json=payload, timeout=45)
            )
            assert await bell.next_ring() == {"type": "ring", "reason": "consent.request"}
            async with asyncio.timeout(40):
                answer = await asking
            assert answer.status_code == 502, answer.text
            assert answer.json() == {
                "error": "agent_unreachable",
                "message": "the machine did not wake up in time",
            }
            assert await off_loop(is_online, broker, agent.agent_id)  # its doorbell stands
    finally:
        desk.close()
    records = await off_loop(audit_records, broker)
    asked = [
        r
        for r in records
        if r["type"] == "session.requested" and r["details"]["agent_id"] == agent.agent_id
    ]
    assert len(asked) == 1
    ended = [r for r in records if r["target"] == asked[0]["target"]][-1]
    assert ended["type"] == "session.ended"
    assert ended["details"]["end_reason"] == "error"
    assert ended["details"]["error"] == "the machine did not wake up in time"


async def test_a_newer_doorbell_ends_the_older_one(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    token = await issued_key(agent)
    said = hello(agent.agent_id, "have")
    async with doorbell(client, agent.agent_id, token, said) as older:
        assert await older.line() == {"type": "beat"}
        async with (
            doorbell_client(broker) as other,
            doorbell(other, agent.agent_id, token, said) as newer,
        ):
            assert await newer.line() == {"type": "beat"}
            assert await older.ended()
            assert await off_loop(is_online, broker, agent.agent_id)


async def test_removing_the_agent_ends_its_doorbell_and_its_key_then_is_403(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    token = await issued_key(agent)
    said = hello(agent.agent_id, "have")
    admin = await off_loop(Desk.login, broker, ADMIN, ADMIN_PW)
    try:
        async with doorbell(client, agent.agent_id, token, said) as bell:
            assert await bell.line() == {"type": "beat"}
            removed = await off_loop(admin.client.delete, f"/api/v1/agents/{agent.agent_id}")
            assert removed.status_code == 200
            assert await bell.ended()
    finally:
        admin.close()
    answer = await ring(
        client,
        {**authorization(agent.agent_id, token), "content-type": "application/json"},
        body(said),
    )
    assert answer.status_code == 403 and answer.json()["code"] == "agent_removed"
    assert not await off_loop(is_online, broker, agent.agent_id)
    records = audit_records(broker)
    assert any(
        r["type"] == "agent.refused" and r["target"] == agent.agent_id for r in records
    ) and token not in json.dumps(records)


async def test_a_doorbell_that_cannot_be_audited_is_refused(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    token = await issued_key(agent)
    await off_loop(wait_for, lambda: not is_online(broker, agent.agent_id), 15, "offline")
    headers = {**authorization(agent.agent_id, token), "content-type": "application/json"}
    with audit_locked(broker):  # its connect cannot be recorded: it does not come online
        answer = await ring(client, headers, body(hello(agent.agent_id, "have")))
    assert answer.status_code == 503 and answer.headers["connection"] == "close"
    assert not await off_loop(is_online, broker, agent.agent_id)


async def test_an_agent_removed_while_its_doorbell_speaks_gets_no_bell(
    broker: Broker, agent: Agent, client: httpx.AsyncClient
) -> None:
    """The removal lands while the doorbell's body is still on its way (the broker
    awaits it for up to 10 s): the doorbell is refused, and the PC is not online."""
    token = await issued_key(agent)
    whole = body(hello(agent.agent_id, "have"))
    admin = await off_loop(Desk.login, broker, ADMIN, ADMIN_PW)

    async def slowly() -> AsyncIterator[bytes]:
        yield whole[:5]
        removed = await off_loop(admin.client.delete, f"/api/v1/agents/{agent.agent_id}")
        assert removed.status_code == 200
        yield whole[5:]

    try:
        answer = await ring(
            client,
            {**authorization(agent.agent_id, token), "content-type": "application/json"},
            slowly(),
        )
    finally:
        admin.close()
    assert answer.status_code == 403 and answer.json()["code"] == "agent_removed"
    assert not await off_loop(is_online, broker, agent.agent_id)
