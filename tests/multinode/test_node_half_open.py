"""A node whose connection to PostgreSQL goes silent without closing (half-open: the
database's host gone, a partition) must not hang on it (#21, docs/multinode.md): its
store calls fail within a bounded time, its heartbeat with them, and the cut-off
rule stops its sessions before the other nodes take it for dead. Real PostgreSQL
behind a TCP proxy of ours on 127.0.0.1 that stops forwarding without closing
(``CuttableProxy.black_hole``), a real node and agent."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import websockets

from allowhelp.broker.audit.pg_chain import PgAuditLog
from allowhelp.broker.errors import AuditUnavailable, StoreError
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.pglink import (
    CALL_DEADLINE,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    PROBE_DEADLINE,
)
from allowhelp.broker.store import Store
from allowhelp.broker.store.nodes import NODE_STALE
from allowhelp.broker.store.postgres_db import STATEMENT_TIMEOUT, connect
from harness import TECH, TECH_PW, Agent, Broker, Desk, broker_cli, running_fleet
from netkit import CuttableProxy
from terminalkit import Terminal, consented_shell

HEARTBEAT = 5.0  # node/cluster.py
CUT_OFF = 20.0  # node/cluster.py: NODE_STALE * 2 / 3


def _via(proxy: CuttableProxy, pg_url: str) -> str:
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition(":")[0] + f":{proxy.port}"))


@pytest.fixture
def proxy(pg_url: str) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(urlsplit(pg_url).port or 5432)
    proxy.restore()
    yield proxy
    proxy.close()


def test_a_store_connection_has_keepalives_and_a_statement_timeout(pg_url: str) -> None:
    with connect(PostgresUrl.parse(pg_url)) as conn:
        sock = socket.socket(fileno=conn.fileno())
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert user_timeout == int(CALL_DEADLINE * 1000)
        finally:
            sock.detach()  # the connection's, not ours to close
        row = conn.execute("SHOW statement_timeout").fetchone()
        assert row is not None and row[0] == f"{int(STATEMENT_TIMEOUT)}s"


def test_a_silent_connection_fails_the_call_then_is_opened_again(
    pg_url: str, proxy: CuttableProxy
) -> None:
    store = Store.open(PostgresUrl.parse(_via(proxy, pg_url)))
    try:
        store.node_id = "a" * 32
        assert store.nodes() == []
        time.sleep(1.1)  # idle past IDLE_PROBE: the next call checks the connection first
        proxy.black_hole = True  # open, but nothing goes through any more
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer within"):
            store.nodes()
        took = time.monotonic() - started
        print(f"a call on the silent connection failed after {took:.1f} s")
        assert PROBE_DEADLINE - 0.5 < took < PROBE_DEADLINE + 2
        started = time.monotonic()
        with pytest.raises(StoreError):  # a new connection through the silence: no answer
            store.check_writable()
        assert time.monotonic() - started < CALL_DEADLINE + 2
        proxy.black_hole = False
        assert store.nodes() == []  # a new connection: the store answers again
    finally:
        proxy.black_hole = False
        proxy.cut()  # the silent connections, desynchronised, are closed with the proxy
        store.close()


def test_an_audit_write_on_a_silent_connection_is_refused_in_time(
    pg_url: str, proxy: CuttableProxy
) -> None:
    """The audit chain's connection is cut as the store's (``pglink.py``): without it
    the record's write hangs on the silent connection, and the action waiting for its
    record with it (a session's end, a technician's page)."""
    audit = PgAuditLog.open_url(PostgresUrl.parse(_via(proxy, pg_url)))
    try:
        audit.append("user.created", actor="system:cli", target="before")
        proxy.black_hole = True
        started = time.monotonic()  # a read on the connection just used (no probe first)
        with pytest.raises(AuditUnavailable, match="did not answer within"):
            audit.records()
        assert time.monotonic() - started < CALL_DEADLINE + 2
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            audit.append("user.created", actor="system:cli", target="silent")
        took = time.monotonic() - started
        print(f"an audit write on the silent connection was refused after {took:.1f} s")
        assert took < CALL_DEADLINE + 2
        proxy.black_hole = False
        audit.append("user.created", actor="system:cli", target="after")  # a new connection
        targets = [r.target for r in audit.records()]
        assert "before" in targets and "after" in targets and "silent" not in targets
    finally:
        proxy.black_hole = False
        proxy.cut()
        audit.close()


async def test_a_node_whose_database_goes_silent_stops_its_sessions_in_time(
    tmp_path: Path, pg_url: str, proxy: CuttableProxy
) -> None:
    """Without a deadline the heartbeat hangs on the silent connection forever, the
    node never learns it is cut off, and its session goes on after the other nodes
    have taken the node for dead (30 s) and ended the session in the store. Here the
    heartbeat fails within seconds and, 20 s after the last one written, the node
    closes the session's channel: the shell on the PC ends."""
    with running_fleet(tmp_path, store=_via(proxy, pg_url)) as (_, node, agent):
        desk = await asyncio.to_thread(Desk.login, node, TECH, TECH_PW)
        try:
            await _stopped_in_time(node, agent, desk, proxy)
        finally:
            desk.close()
    done = broker_cli("audit", "verify", "--store", pg_url, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True, done.stdout
    records = await asyncio.to_thread(_ended, pg_url)
    assert len(records) == 1, records  # one end record, the node's (not a second at exit)
    details = records[0]["details"]
    assert details["end_reason"] == "broker_restart", records


async def _stopped_in_time(node: Broker, agent: Agent, desk: Desk, proxy: CuttableProxy) -> None:
    session_id = await asyncio.to_thread(consented_shell, desk, agent)
    async with websockets.connect(
        desk.ws_url(session_id),
        ssl=node.ssl_context(),
        origin=node.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as ws:
        term = Terminal(ws)
        await term.send('echo "shell=$$=pid"\n')  # the echoed input shows "$$=pid"
        found = re.search(rb"shell=(\d+)=pid\r\n", await term.expect(b"=pid\r\n"))
        assert found is not None
        shell = int(found.group(1))
        assert _running(shell)
        mark = node.log.stat().st_size
        proxy.black_hole = True  # the node's connections stay open; nothing answers
        silent = time.monotonic()
        async with asyncio.timeout(NODE_STALE + 10):
            while _running(shell):  # access stopped: the PC's shell is gone
                await asyncio.sleep(0.1)
        stopped = time.monotonic() - silent
        said = node.log.read_text()[mark:]
        print(f"the node stopped its session {stopped:.1f} s after its database went silent")
        assert "node heartbeat failed: the database did not answer within" in said, said
        assert f"session={session_id} stopped: this node lost the database" in said, said
        assert CUT_OFF - HEARTBEAT - 1 < stopped < NODE_STALE  # the rule, not by chance
        # The network heals (the silent connections reset): the end owed is recorded.
        proxy.black_hole = False
        await asyncio.to_thread(proxy.cut)
        await asyncio.to_thread(proxy.restore)
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(60):
                while True:
                    await ws.recv()
    ended = await asyncio.to_thread(desk.wait_state, session_id, "ended", 60)
    # the end that stopped access, though the relay it stopped ended the session too
    assert ended["end_reason"] == "broker_restart"


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _ended(pg_url: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r["type"] == "session.ended"]
