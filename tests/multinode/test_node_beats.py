"""A beat is the heartbeat, then the node's duties (keys, fences, the node list, dead
nodes' sessions: node/cluster.py). Only the heartbeat says whether the node is cut off
from the database: a beat whose heartbeat was written but whose duties failed is not
losing the database, however long that lasts, so the node's sessions go on (#21,
docs/multinode.md). Real node, real agent, real PostgreSQL, the duties made to fail
by a table they read going away (the heartbeat does not read it)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psycopg
import websockets

from allowhelp.broker.store.nodes import NODE_STALE
from harness import TECH, TECH_PW, Desk, running_fleet
from terminalkit import Terminal, consented_shell

HEARTBEAT = 5.0  # node/cluster.py
CUT_OFF = NODE_STALE * 2 / 3  # node/cluster.py
DUTIES_FAILED = "node duties failed (the heartbeat stands)"


def _rename(pg_url: str, old: str, new: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def test_failing_duties_after_a_written_heartbeat_do_not_cut_the_node_off(
    tmp_path: Path, pg_url: str
) -> None:
    """Were a failed duty counted as a failed beat, the node would stop its session
    20 s into the failures (the cut-off rule). Here the duties fail for longer than
    that, every beat, and the session (its shell on the PC) goes on."""
    with running_fleet(tmp_path, store=pg_url) as (_, node, agent):
        desk = await asyncio.to_thread(Desk.login, node, TECH, TECH_PW)
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with websockets.connect(
            desk.ws_url(session_id),
            ssl=node.ssl_context(),
            origin=node.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            term = Terminal(ws)
            mark = node.log.stat().st_size
            # agents_elsewhere, a duty, reads agent_nodes; the heartbeat does not
            await asyncio.to_thread(_rename, pg_url, "agent_nodes", "agent_nodes_away")
            try:
                beats = int(CUT_OFF // HEARTBEAT) + 2  # failing for longer than the cut-off
                async with asyncio.timeout((beats + 2) * HEARTBEAT):
                    while node.log.read_text()[mark:].count(DUTIES_FAILED) < beats:
                        await asyncio.sleep(0.2)
                said = node.log.read_text()[mark:]
                assert "node heartbeat failed" not in said, said  # the heartbeat stood
                assert "this node lost the database" not in said, said
                await term.send('echo "still=$((6*7))=here"\n')  # the shell goes on
                await term.expect(b"still=42=here", timeout=10)
            finally:
                await asyncio.to_thread(_rename, pg_url, "agent_nodes_away", "agent_nodes")
            session = await asyncio.to_thread(desk.session, session_id)
            assert session["state"] == "active"
        desk.close()
        assert re.search(r'duties failed.*relation "agent_nodes" does not exist', said), said
