"""The broker nodes sharing one database, and what each of them holds (#21).

Each serving broker is a node with an id of its own (``node/cluster.py``): a
row in ``broker_nodes`` with a heartbeat in the database's clock, the sessions
it runs (``session_nodes``) and the agents whose tunnel it holds
(``agent_nodes``). On one SQLite file there is one node; on PostgreSQL a node
that starts claims only its own earlier sessions and those of nodes whose
heartbeat stopped, never a live node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from allowhelp.broker.model.records import SESSION_SELECT, row_session
from allowhelp.broker.model.session import Session
from allowhelp.broker.store.core import StoreCore

# Seconds without a heartbeat after which a node counts as dead.
NODE_STALE = 30.0

_OPEN = "s.state IN ('requested', 'awaiting_consent', 'active')"


@dataclass(frozen=True)
class NodeRecord:
    id: str
    host: str
    pid: int
    https: str
    tunnel: str
    started: float
    heartbeat: float
    age: float  # seconds since its heartbeat, by the database's clock


class NodeStore(StoreCore):
    def node_started(self, node: NodeRecord) -> None:
        now = self._database.now_sql
        with self._tx() as db:
            db.execute(
                "INSERT INTO broker_nodes (id, host, pid, https, tunnel, started, heartbeat)"  # noqa: S608 - the clock's SQL
                f" VALUES (?, ?, ?, ?, ?, {now}, {now}) ON CONFLICT(id) DO UPDATE SET"
                " host = excluded.host, pid = excluded.pid, https = excluded.https,"
                " tunnel = excluded.tunnel, started = excluded.started,"
                " heartbeat = excluded.heartbeat",
                (node.id, node.host, node.pid, node.https, node.tunnel),
            )

    def node_heartbeat(self, node_id: str) -> bool:
        """False when this node's row is gone (another node took it for dead)."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE broker_nodes SET heartbeat = {self._database.now_sql} WHERE id = ?",  # noqa: S608
                (node_id,),
            )
            return cur.rowcount == 1

    def node_stopped(self, node_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM agent_nodes WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM broker_nodes WHERE id = ?", (node_id,))

    def nodes(self) -> list[NodeRecord]:
        rows = self._query(
            "SELECT id, host, pid, https, tunnel, started, heartbeat,"  # noqa: S608 - the clock's SQL
            f" {self._database.now_sql} - heartbeat AS age FROM broker_nodes ORDER BY id"
        )
        return [NodeRecord(*(row[i] for i in range(8))) for row in rows]

    def claim_stale_sessions(self, *, own: bool) -> list[Session]:
        """Open sessions no live node runs, now this node's to end (one transaction).

        Those of no node or of a node whose heartbeat stopped; with ``own``
        (at start) this node's too, left by its earlier run. On SQLite, with
        ``own``: every open session (one file is one node, whatever id ran them).
        """
        who, args = "1 = 1", cast("tuple[object, ...]", ())
        if not (own and self.local_folder is not None):
            who = (
                f"sn.node_id IS NULL OR n.id IS NULL OR n.heartbeat < {self._database.now_sql} - ?"
            )
            args = (NODE_STALE,)
            if own:
                who, args = who + " OR sn.node_id = ?", (NODE_STALE, self.node_id)
        sql = (
            f"{SESSION_SELECT} LEFT JOIN session_nodes sn ON sn.session_id = s.id"
            f" LEFT JOIN broker_nodes n ON n.id = sn.node_id WHERE {_OPEN} AND ({who})"
        )
        with self._tx() as db:
            sessions = [row_session(row) for row in db.execute(sql, args).fetchall()]
            for session in sessions:
                db.execute(
                    "INSERT INTO session_nodes (session_id, node_id) VALUES (?, ?)"
                    " ON CONFLICT(session_id) DO UPDATE SET node_id = excluded.node_id",
                    (session.id, self.node_id),
                )
        return sessions

    def hold_late_end(self, session_id: str) -> bool | None:
        """Whether this node may write the end record it owes for a session it stopped
        while cut off from the database: check and set in one transaction, under the
        write lock that every node's ``claim_stale_sessions`` takes too.

        True: the session is still this node's; the heartbeat is renewed here, so no
        node can take this one for dead (and claim the session) before the record
        follows. False: another node claimed it, and that node writes its end. None:
        this node's row is gone (taken for dead), so it cannot hold anything yet.
        """
        now = self._database.now_sql
        with self._tx() as db:
            beat = db.execute(
                f"UPDATE broker_nodes SET heartbeat = {now} WHERE id = ?",  # noqa: S608 - the clock's SQL
                (self.node_id,),
            )
            if beat.rowcount == 1:
                db.execute(
                    "INSERT INTO session_nodes (session_id, node_id) VALUES (?, ?)"
                    " ON CONFLICT(session_id) DO NOTHING",
                    (session_id, self.node_id),
                )
            row = db.execute(
                "SELECT node_id FROM session_nodes WHERE session_id = ?", (session_id,)
            ).fetchone()
            holder = str(row[0]) if row is not None else None
            if holder is not None and holder != self.node_id:
                return False
            return True if beat.rowcount == 1 else None

    def agent_node(self, agent_id: str) -> str | None:
        """The live node holding this agent's tunnel, or None."""
        rows = self._query(
            "SELECT an.node_id FROM agent_nodes an JOIN broker_nodes n ON n.id = an.node_id"  # noqa: S608 - the clock's SQL
            f" WHERE an.agent_id = ? AND n.heartbeat >= {self._database.now_sql} - ?",
            (agent_id, NODE_STALE),
        )
        return str(rows[0][0]) if rows else None
