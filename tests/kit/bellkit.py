"""The broker's side of the doorbell from outside: an enrolled agent's own SSH key
saying a scripted Hello (and hearing what the broker sends), and the doorbell's
HTTPS stream, each against a real broker process.

The scripted agent is the real SSH link (asyncssh, reverse, the agent's key), so
the broker treats it as it treats ``allowhelp-agent run``; only what it says is
chosen by the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from allowhelp.certs.sshkeys import load_private_key
from allowhelp.protocol.control import Hello
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM
from harness import Agent, Broker, broker_cli

DOORBELL = "/api/v1/agent/doorbell"


def hello(agent_id: str, doorbell: str = "need", user: str = "ann") -> Hello:
    return Hello(
        hostname=f"pc-{agent_id[-4:]}", os="Linux", user=user, version="1.0", doorbell=doorbell
    )


@dataclass
class Heard:
    """What the broker sent on the control channel, one JSON object per line."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def first(self, type_: str, timeout: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if line.get("type") == type_:
                        return line
                self.changed.clear()
                await self.changed.wait()

    def all(self, type_: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("type") == type_]


class _Control(asyncssh.SSHServerSession[bytes]):
    def __init__(self, first: bytes, heard: Heard) -> None:
        self._first = first
        self._heard = heard
        self._buffer = b""

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CONTROL_SUBSYSTEM

    def session_started(self) -> None:
        self._chan.write(self._first)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._buffer += data
        *whole, self._buffer = self._buffer.split(b"\n")
        self._heard.lines.extend(json.loads(line) for line in whole if line)
        self._heard.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._heard.closed.set()


class _Scripted(asyncssh.SSHServer):
    def __init__(self, first: bytes, heard: Heard) -> None:
        self._first, self._heard = first, heard

    def begin_auth(self, username: str) -> bool:
        return False  # the agent trusts the broker it dialled (host key pinned elsewhere)

    def session_requested(self) -> _Control:
        return _Control(self._first, self._heard)


@asynccontextmanager
async def scripted_agent(agent: Agent, *said: Hello) -> AsyncIterator[Heard]:
    """The agent's SSH link, saying each of ``said`` first; hung up on leaving."""
    enrolled = json.loads((agent.config / "agent.json").read_text())
    heard = Heard()
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[load_private_key(agent.config / "host_key")],
        server_factory=lambda: _Scripted(b"".join(h.encode() for h in said), heard),
        encoding=None,
    )
    conn = await asyncssh.connect_reverse(
        enrolled["tunnel_host"], enrolled["tunnel_port"], config=None, options=options
    )
    try:
        yield heard
    finally:
        conn.close()
        await conn.wait_closed()


def doorbell_client(broker: Broker) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=broker.url, verify=broker.ssl_context(), timeout=20)


def authorization(agent_id: str, token: str) -> dict[str, str]:
    return {"authorization": f"Doorbell {agent_id}:{token}"}


def body(said: Hello) -> bytes:
    return json.dumps({"hello": said.to_json()}).encode()


@dataclass
class Stream:
    """One open doorbell: its answer and its lines as they come."""

    response: httpx.Response
    _lines: AsyncIterator[str]

    async def line(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next line, or None when the broker ended the stream."""
        try:
            async with asyncio.timeout(timeout):
                text = await anext(self._lines)
        except StopAsyncIteration:
            return None
        value: dict[str, Any] = json.loads(text)
        return value

    async def next_ring(self, timeout: float = 15) -> dict[str, Any] | None:
        async with asyncio.timeout(timeout):
            while (line := await self.line(timeout)) is not None:
                if line["type"] == "ring":
                    return line
        return None

    async def ended(self, timeout: float = 10) -> bool:
        async with asyncio.timeout(timeout):
            while await self.line(timeout) is not None:
                pass
        return True


@asynccontextmanager
async def doorbell(
    client: httpx.AsyncClient, agent_id: str, token: str, said: Hello
) -> AsyncIterator[Stream]:
    request = client.build_request(
        "POST",
        DOORBELL,
        headers={**authorization(agent_id, token), "content-type": "application/json"},
        content=body(said),
    )
    response = await client.send(request, stream=True)
    try:
        yield Stream(response, response.aiter_lines())
    finally:
        await response.aclose()


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def audit_text(broker: Broker) -> str:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return done.stdout


def database(broker: Broker) -> Path:
    return broker.data / "broker.sqlite3"
