"""The audit record comes before the state it records, under a real broker.

The audit log is made to fail for real: a second process holds the write lock
of ``audit.sqlite3`` (``harness.audit_locked``), so every record the broker
tries waits out its busy timeout and is refused. Each session transition is
tried that way: a consent decision (grant, view-only grant, deny), the start
of a relay, its end. Whatever the broker shows of a session must then be on
the record (``shown``), the PC must not keep what the broker did not adopt,
and nothing refused is adopted late once the log works again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    agent_cli,
    agent_status,
    audit_locked,
    broker_cli,
    log_mark,
    log_since,
    running_fleet,
    wait_for,
    wait_pending,
)
from xdesk import alive

# The record that must exist before the broker may show a session in this state.
RECORD_OF_STATE = {
    "awaiting_consent": "consent.asked",
    "active": "consent.granted",
    "denied": "consent.denied",
    "expired": "consent.expired",
    "ended": "session.ended",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    agent_args = ("--reconnect-cap", "2", "--prompt", "none")
    # A screen engine (the test knob's program), else the broker refuses a screen
    # request at once for a PC without a display (#15) and no decision is ever asked.
    env = {**os.environ, TEST_COMMAND_ENV: "cat"}
    with running_fleet(
        tmp_path_factory.mktemp("audit-first"), agent_args=agent_args, agent_env=env
    ) as (
        _,
        broker,
        agent,
    ):
        yield broker, agent


@pytest.fixture
def desk(world: tuple[Broker, Agent]) -> Iterator[Desk]:
    desk = Desk.login(world[0], TECH, TECH_PW)  # before any lock: a login is audited too
    yield desk
    desk.close()


def records(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in found if r["target"] == session_id]


def types(broker: Broker, session_id: str) -> list[str]:
    return [r["type"] for r in records(broker, session_id)]


def shown(desk: Desk, broker: Broker, session_id: str) -> dict[str, Any]:
    """The session as the broker shows it, checked against the log: its state's
    record is committed, and a view-only flag only with a view-only grant on record.
    (Read in this order, a record committed before the state it allows is always
    found; a state adopted before its record may not be.)"""
    session = desk.session(session_id)
    held = records(broker, session_id)
    kinds = [r["type"] for r in held]
    assert RECORD_OF_STATE[session["state"]] in kinds, (session["state"], kinds)
    if session["view_only"]:
        granted = next(r for r in held if r["type"] == "consent.granted")
        assert granted["details"]["scope"].endswith("view-only"), granted
    return session


def granted_on_pc(agent: Agent) -> list[str]:
    return [g["session_id"] for g in agent_status(agent)["sessions"]]


def asked(desk: Desk, agent: Agent, kind: str = "shell") -> str:
    made = desk.request(agent.agent_id, kind=kind, reason="audit test")
    assert made.status_code == 201, made.text
    session_id = str(made.json()["id"])
    wait_pending(agent, session_id)
    return session_id


def active(desk: Desk, agent: Agent, kind: str = "shell") -> str:
    session_id = asked(desk, agent, kind)
    assert agent_call(agent, "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    return session_id


REFUSED_BATCH = re.compile(r"audit batch of \d+ \(([^)]*)\) refused")


def refused_record(broker: Broker, mark: int, event: str) -> bool:
    """The broker tried to commit ``event`` and the log refused it (the broker
    logs each refused batch with the types of its records)."""
    batches = REFUSED_BATCH.findall(log_since(broker.log, mark))
    return any(event in kinds.split(", ") for kinds in batches)


def dropped_by_broker(agent: Agent, mark: int, session_id: str) -> bool:
    return f"session={session_id} ended by the broker (error)" in log_since(agent.log, mark)


def verified(broker: Broker) -> None:
    done = broker_cli("audit", "verify", "--data", str(broker.data))
    assert done.returncode == 0, done.stdout + done.stderr


def ended_on_the_record(desk: Desk, broker: Broker, session_id: str) -> dict[str, Any]:
    """Once the log takes records again the end is written (the broker may write
    an end it owes by itself, or the technician asks again), once, and only then shown."""
    again = desk.client.post(f"/api/v1/sessions/{session_id}/end")
    assert again.status_code in (200, 409), again.text  # 409: the owed end came first
    desk.wait_state(session_id, "ended")
    final = shown(desk, broker, session_id)
    assert types(broker, session_id).count("session.ended") == 1
    verified(broker)
    return final


async def terminal(desk: Desk, session_id: str) -> ClientConnection:
    return await websockets.connect(
        desk.ws_url(session_id),
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    )


async def until_closed(ws: ClientConnection, timeout: float = 30) -> tuple[int, str, bytes]:
    """Read to the broker's close: its code, its reason, every byte before it."""
    seen = b""
    try:
        while True:
            frame = await asyncio.wait_for(ws.recv(), timeout)
            seen += frame if isinstance(frame, bytes) else frame.encode()
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "the socket was cut, not closed by the broker"
        return closed.rcvd.code, closed.rcvd.reason, seen


@pytest.mark.parametrize(
    ("kind", "answer", "event"),
    [
        ("shell", ["allow"], "consent.granted"),
        ("screen", ["allow", "--view-only"], "consent.granted"),
        ("shell", ["deny"], "consent.denied"),
    ],
    ids=["grant", "view-only-grant", "deny"],
)
def test_a_decision_the_log_refuses_is_not_taken(
    world: tuple[Broker, Agent], desk: Desk, kind: str, answer: list[str], event: str
) -> None:
    broker, agent = world
    session_id = asked(desk, agent, kind)
    broker_at, agent_at = log_mark(broker.log), log_mark(agent.log)
    with audit_locked(broker):
        command, *options = answer
        decided = agent_cli(command, *options, "--config", str(agent.config), "--", session_id)
        assert decided.returncode == 0, decided.stderr  # the PC decided; now it must be recorded
        wait_for(
            lambda: refused_record(broker, broker_at, event),
            20,
            f"the broker to try to record {event}",
        )
        if command == "allow":
            # Not recorded, so not adopted: the broker tells the PC to drop the grant.
            wait_for(
                lambda: dropped_by_broker(agent, agent_at, session_id),
                20,
                "the agent to be told to drop the grant",
            )
        assert session_id not in granted_on_pc(agent)
        still = shown(desk, broker, session_id)
        assert still["state"] == "awaiting_consent" and still["view_only"] is False
    # The log works again: the refused decision is not adopted late.
    after = shown(desk, broker, session_id)
    assert after["state"] == "awaiting_consent" and after["decided"] is None
    assert event not in types(broker, session_id)
    assert session_id not in granted_on_pc(agent)
    assert desk.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 200
    assert shown(desk, broker, session_id)["end_reason"] == "technician"
    verified(broker)


def test_a_start_the_log_refuses_opens_nothing_on_the_pc(
    world: tuple[Broker, Agent], desk: Desk
) -> None:
    broker, agent = world
    session_id = active(desk, agent)
    broker_at, agent_at = log_mark(broker.log), log_mark(agent.log)

    async def attach() -> tuple[int, str, bytes]:
        ws = await terminal(desk, session_id)
        await ws.send(b"echo never-$((40+2))\n")
        return await until_closed(ws)

    with audit_locked(broker):
        code, reason, seen = asyncio.run(attach())
        assert code == 1011 and "audit" in reason, (code, reason)
        assert seen == b""  # not one byte of a shell
        assert refused_record(broker, broker_at, "session.started")
        wait_for(
            lambda: dropped_by_broker(agent, agent_at, session_id),
            20,
            "the agent to be told to drop the grant",
        )
        assert session_id not in granted_on_pc(agent)
        # No channel reached the PC: no shell was started for the technician.
        assert "shell pid=" not in log_since(agent.log, agent_at)
        assert shown(desk, broker, session_id)["state"] == "active"  # the end is not recorded
        assert "session.ended" not in types(broker, session_id)
    assert "session.started" not in types(broker, session_id)
    assert "shell pid=" not in log_since(agent.log, agent_at)
    ended_on_the_record(desk, broker, session_id)


def test_an_end_the_log_refuses_still_stops_the_pc_and_is_not_shown(
    world: tuple[Broker, Agent], desk: Desk
) -> None:
    broker, agent = world
    session_id = active(desk, agent)
    broker_at = log_mark(broker.log)

    async def scenario() -> int:
        ws = await terminal(desk, session_id)
        await ws.send(b"echo shell-pid-$$\n")
        seen = b""
        while not (found := re.search(rb"shell-pid-(\d+)", seen)):
            frame = await asyncio.wait_for(ws.recv(), 15)
            assert isinstance(frame, bytes)
            seen += frame
        shell = int(found.group(1))
        assert alive(shell)
        assert shown(desk, broker, session_id)["state"] == "active"
        assert "session.started" in types(broker, session_id)
        with audit_locked(broker):
            ended = await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
            assert ended.status_code == 503, ended.text
            assert ended.json()["error"] == "audit_unavailable"
            code, reason, _ = await until_closed(ws)
            assert code == 1011 and "audit" in reason, (code, reason)
            assert refused_record(broker, broker_at, "session.ended")
            # Stopping access needs no record: the PC was told, its shell is gone.
            await asyncio.to_thread(wait_for, lambda: not alive(shell), 20, "the shell to stop")
            assert session_id not in granted_on_pc(agent)
            # The end is not on the record, so the broker does not show it.
            assert shown(desk, broker, session_id)["state"] == "active"
            assert "session.ended" not in types(broker, session_id)
        return shell

    asyncio.run(scenario())
    assert ended_on_the_record(desk, broker, session_id)["end_reason"] == "technician"
