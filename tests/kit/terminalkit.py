"""A consented shell and its terminal WebSocket, as the technician's page drives them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    wait_for,
    wait_pending,
)


def invited(owner: Desk, agent: Agent, session_id: str, who: str, mode: str) -> dict[str, Any]:
    """``who`` invited by the owner and allowed by the PC user."""
    asked = owner.client.post(
        f"/api/v1/sessions/{session_id}/invite", json={"username": who, "mode": mode}
    )
    assert asked.status_code == 201, asked.text
    invitation: dict[str, Any] = asked.json()
    wait_pending(agent, invitation["id"])
    assert agent_call(agent, "allow", invitation["id"]).returncode == 0
    wait_for(
        lambda: (
            owner.client.get(f"/api/v1/sessions/{session_id}/invites").json()[-1]["state"]
            == "allowed"
        ),
        15,
        "the grant to reach the broker",
    )
    return invitation


def consented_shell(desk: Desk, agent: Agent) -> str:
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    assert agent_call(agent, "allow", session["id"]).returncode == 0
    desk.wait_state(session["id"], "active")
    return str(session["id"])


class Terminal:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen = b""

    async def send(self, text: str) -> None:
        await self.ws.send(text.encode())

    async def expect(self, needle: bytes, timeout: float = 10) -> bytes:
        async def read() -> bytes:
            while needle not in self.seen:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes)
                self.seen += frame
            return self.seen

        return await asyncio.wait_for(read(), timeout)


async def shell_says(broker: Broker, agent: Agent, command: str, expect: bytes) -> None:
    """A technician asks for a shell, the PC allows it, ``command`` prints ``expect``."""
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with connect(
            desk.ws_url(session_id),
            ssl=broker.ssl_context(),
            origin=broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            term = Terminal(ws)
            await term.send(command + "\n")
            await term.expect(expect, timeout=30)
        desk.client.post(f"/api/v1/sessions/{session_id}/end")
    finally:
        desk.close()


@contextlib.asynccontextmanager
async def terminal(desk: Desk, session_id: str) -> AsyncIterator[Terminal]:
    """``desk``'s terminal WebSocket on ``session_id`` (100x30), as its page opens it."""
    async with connect(
        desk.ws_url(session_id) + "?cols=100&rows=30",
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
        max_size=2**22,
    ) as ws:
        yield Terminal(ws)


async def refused(desk: Desk, session_id: str) -> int:
    """The HTTP status that refused ``desk``'s terminal WebSocket on ``session_id``."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with terminal(desk, session_id):
            pass
    return caught.value.response.status_code
