"""What a node passes on of a technician's relayed request (#21, docs/multinode.md "Routing").

A real node A (``--node-listen``, on a real PostgreSQL) and, as the node running the
session, a listener of the test's own holding a node certificate of the shared CA
(a live ``broker_nodes`` row, its address in ``node_peers``, the session's row in
``session_nodes``): it hears exactly what A sends. A state-changing request is on
A's record as relayed before it leaves A, a read is not; of the browser's cookies
only allowhelp's own session cookie leaves A, on HTTP as on the WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from allowhelp.broker.audit.pg_chain import AUDIT_LOCK
from allowhelp.broker.relay.node_link import NodeCredentials
from allowhelp.certs.nodecert import issue_node_certificate
from harness import TECH, TECH_PW, Broker, Desk, broker_cli, staffed_broker
from pgkit import Cluster

RELAY = ("--node-listen", "127.0.0.1:0")
COOKIE = "__Host-allowhelp"
BROWSER_COOKIE = "tracker=browser-secret-0451"


@dataclass
class FakeNode:
    """A node of the shared CA that records what it is sent, and answers ``{}``."""

    node_id: str
    pg_url: str
    heard: list[bytes] = field(default_factory=list)
    relayed_before: list[int] = field(default_factory=list)  # A's records when each came

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            body = b""
            lowered = head.lower()
            if b"transfer-encoding: chunked" in lowered:
                body = await reader.readuntil(b"0\r\n\r\n")
            elif b"content-length:" in lowered:
                size = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(size)
            self.relayed_before.append(await asyncio.to_thread(_relayed_count, self.pg_url))
            self.heard.append(head + body)
            if b"upgrade: websocket" in lowered:
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\nconnection: close\r\n\r\n{}"
                )
            await writer.drain()
        writer.close()


def _relayed_count(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM audit WHERE type = 'request.relayed'").fetchone()
    return int(row[0]) if row else 0


def _records(pg_url: str, kind: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in found if r["type"] == kind]


def _node_id(broker: Broker) -> str:
    return (broker.data / "node.id").read_text().strip()


@contextlib.asynccontextmanager
async def _fake_node(a: Broker, pg_url: str, folder: Path) -> AsyncIterator[FakeNode]:
    """The fake node listening, live in ``broker_nodes``, and running one session of
    TECH's on an agent of its own."""
    node = FakeNode(secrets.token_hex(16), pg_url)
    credentials = NodeCredentials(a.data / "ca.pem", folder / "fake.pem", folder / "fake.key")
    issue_node_certificate(
        credentials.ca, a.data / "ca.key", node.node_id, credentials.cert, credentials.key
    )
    server = await asyncio.start_server(
        node.serve, "127.0.0.1", 0, ssl=credentials.server_context()
    )
    port = server.sockets[0].getsockname()[1]
    now = time.time()
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO broker_nodes (id, host, pid, https, tunnel, started, heartbeat)"
            " VALUES (%s, 'fake', 1, %s, 'off', %s, %s)",
            (node.node_id, f"https://127.0.0.1:{port}", now, now),
        )
        conn.execute(
            "INSERT INTO node_peers (node_id, address) VALUES (%s, %s)",
            (node.node_id, f"127.0.0.1:{port}"),
        )
    try:
        yield node
    finally:
        server.close()
        await server.wait_closed()


def _session_on(pg_url: str, node_id: str) -> str:
    """An active session of TECH's that the node ``node_id`` runs."""
    session_id = "s-" + secrets.token_hex(8)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO sessions (id, agent_id, technician, kind, reason, phrase, state,"
            " created, started) VALUES (%s, %s, %s, 'shell', 'printer', 'a b c', 'active',"
            " %s, %s)",
            (session_id, "a-" + secrets.token_hex(8), TECH, time.time(), time.time()),
        )
        conn.execute(
            "INSERT INTO session_nodes (session_id, node_id) VALUES (%s, %s)",
            (session_id, node_id),
        )
    return session_id


@pytest.fixture
def node_a(tmp_path: Path, pg_url: str) -> Iterator[Broker]:
    with staffed_broker(tmp_path, broker_args=RELAY, store=pg_url) as fleet:
        yield fleet.brokers[0]


async def test_a_relayed_change_is_audited_before_it_leaves_and_a_read_is_not(
    node_a: Broker, pg_url: str, tmp_path: Path
) -> None:
    async with _fake_node(node_a, pg_url, tmp_path) as fake:
        session_id = _session_on(pg_url, fake.node_id)
        desk = Desk.login(node_a, TECH, TECH_PW)
        messages = f"/api/v1/sessions/{session_id}/messages"
        said = await asyncio.to_thread(desk.client.post, messages, json={"text": "hi"})
        assert said.status_code == 200 and said.json() == {}, said.text  # the fake's answer
        assert fake.relayed_before == [1]  # on A's record before the request reached the node
        read = await asyncio.to_thread(desk.client.get, messages, params={"after": "0"})
        assert read.status_code == 200, read.text
        ended = await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
        assert ended.status_code == 200, ended.text
        assert len(fake.heard) == 3 and fake.heard[1].startswith(b"GET ")
        assert fake.relayed_before == [1, 1, 2]  # the read wrote nothing
        # A session asked for an agent the fake node holds: on the record for the agent.
        agent_id = "a-" + secrets.token_hex(8)
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "INSERT INTO agent_nodes (agent_id, node_id, since) VALUES (%s, %s, %s)",
                (agent_id, fake.node_id, time.time()),
            )
        asked = await asyncio.to_thread(desk.request, agent_id)
        assert asked.status_code == 200 and asked.json() == {}, asked.text
        assert fake.relayed_before == [1, 1, 2, 3]
        desk.close()
    relayed = _records(pg_url, "request.relayed")
    assert [(r["details"]["method"], r["details"]["path"], r["target"]) for r in relayed] == [
        ("POST", messages, session_id),
        ("POST", f"/api/v1/sessions/{session_id}/end", session_id),
        ("POST", "/api/v1/sessions", agent_id),
    ]
    assert relayed[-1]["details"]["agent_id"] == agent_id
    for record in relayed:
        assert record["code"] == "AH2021" and record["actor"] == f"technician:{TECH}"
        assert record["details"]["from_node"] == _node_id(node_a)
        assert record["details"]["to_node"] == fake.node_id


async def test_of_the_browsers_cookies_only_allowhelps_own_leaves_node_a(
    node_a: Broker, pg_url: str, tmp_path: Path
) -> None:
    async with _fake_node(node_a, pg_url, tmp_path) as fake:
        session_id = _session_on(pg_url, fake.node_id)
        desk = Desk.login(node_a, TECH, TECH_PW)
        ours = desk.cookie_header()
        both = f"{BROWSER_COOKIE}; {ours}; other-app=kept-here"
        said = await asyncio.to_thread(
            desk.client.post,
            f"/api/v1/sessions/{session_id}/messages",
            json={"text": "hi"},
            headers={"Cookie": both},
        )
        assert said.status_code == 200, said.text
        with pytest.raises(InvalidStatus) as refused:  # the fake node refuses the upgrade
            async with connect(
                desk.ws_url(session_id),
                ssl=node_a.ssl_context(),
                origin=node_a.url,  # type: ignore[arg-type]
                additional_headers={"Cookie": both},
            ):
                pass
        assert refused.value.response.status_code == 403
        desk.close()
    assert len(fake.heard) == 2 and b"upgrade: websocket" in fake.heard[1].lower()
    for heard in fake.heard:
        head = heard.split(b"\r\n\r\n")[0].decode("latin-1").lower()
        cookies = [line for line in head.split("\r\n") if line.startswith("cookie:")]
        assert cookies == [f"cookie: {ours.lower()}"], head  # the technician's, alone
        assert "browser-secret" not in head and "kept-here" not in head


def _logged(log: Path, since: int) -> list[str]:
    """The statements PostgreSQL logged after byte ``since``, each with its parameters."""
    entries: list[str] = []
    for line in log.read_bytes()[since:].decode(errors="replace").splitlines():
        if " LOG:  " in line:
            entries.append(line)
        elif " DETAIL:  " in line and entries:
            entries[-1] += "\n" + line
    return entries


def _ended_session(pg_url: str, node_id: str) -> str:
    """A session of TECH's that is over: no node runs it any more."""
    session_id = _session_on(pg_url, node_id)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "UPDATE sessions SET state = 'ended', ended = %s, end_reason = 'technician'"
            " WHERE id = %s",
            (time.time(), session_id),
        )
    return session_id


async def test_a_relayed_request_reads_the_login_and_the_session_once(
    tmp_path: Path, pg_url: str, pg_cluster: Cluster
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
    log = pg_cluster.folder / "server.log"
    with staffed_broker(tmp_path, broker_args=RELAY, store=pg_url) as fleet:
        a = fleet.brokers[0]
        async with _fake_node(a, pg_url, tmp_path) as fake:
            running, over = _session_on(pg_url, fake.node_id), _ended_session(pg_url, fake.node_id)
            desk = Desk.login(a, TECH, TECH_PW)

            def logins(entries: list[str]) -> int:
                return sum("web_sessions" in e for e in entries)

            def session_reads(entries: list[str], session_id: str) -> int:
                return sum("sessions s " in e and session_id in e for e in entries)

            # A request about a session no other node runs, served by A itself: the
            # caller's login is read once (it was read again by the endpoint).
            mark = log.stat().st_size
            got = await asyncio.to_thread(desk.client.get, f"/api/v1/sessions/{over}/messages")
            assert got.status_code == 200, got.text
            assert logins(_logged(log, mark)) == 1, _logged(log, mark)
            # A relayed read: the login once, the session and its node once.
            mark = log.stat().st_size
            got = await asyncio.to_thread(desk.client.get, f"/api/v1/sessions/{running}/files")
            assert got.status_code == 200 and got.json() == {}, got.text  # the fake's
            entries = _logged(log, mark)
            assert (logins(entries), session_reads(entries, running)) == (1, 1), entries
            # A relayed WebSocket: the session and its node in one read (it was read
            # again for the record of the relay).
            mark = log.stat().st_size
            with pytest.raises(InvalidStatus):
                async with connect(
                    desk.ws_url(running),
                    ssl=a.ssl_context(),
                    origin=a.url,  # type: ignore[arg-type]
                    additional_headers={"Cookie": desk.cookie_header()},
                ):
                    pass
            entries = _logged(log, mark)
            assert (logins(entries), session_reads(entries, running)) == (1, 1), entries
            assert len(fake.heard) == 2
            desk.close()


async def test_a_relayed_change_that_cannot_be_recorded_does_not_leave_node_a(
    node_a: Broker, pg_url: str, tmp_path: Path
) -> None:
    async with _fake_node(node_a, pg_url, tmp_path) as fake:
        session_id = _session_on(pg_url, fake.node_id)
        desk = Desk.login(node_a, TECH, TECH_PW)
        messages = f"/api/v1/sessions/{session_id}/messages"
        # Another connection holds the chain's append lock: no record can be written.
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            said = await asyncio.to_thread(desk.client.post, messages, json={"text": "hi"})
            holder.rollback()
        assert said.status_code == 503, said.text
        assert fake.heard == []  # refused before anything went to the node
        # The control: with the lock gone, the same request is recorded and relayed.
        again = await asyncio.to_thread(desk.client.post, messages, json={"text": "hi"})
        assert again.status_code == 200, again.text
        assert len(fake.heard) == 1 and fake.relayed_before == [1]
        desk.close()
