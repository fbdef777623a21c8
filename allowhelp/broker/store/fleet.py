"""Enrolment tokens, agents, and agents' connectivity history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from allowhelp.broker.model.database import Row
from allowhelp.broker.model.records import AgentRecord, TokenSummary, agent_from_row
from allowhelp.broker.store.core import StoreCore
from allowhelp.broker.store.database import Connection

# The connectivity history is bounded both ways: per agent (a PC flapping for
# a week keeps its last few hundred events) and in age (older rows go).
CONNECTIVITY_PER_AGENT = 200
CONNECTIVITY_DAYS = 30

Connectivity = Literal["connected", "disconnected"]


@dataclass(frozen=True)
class ConnectivityEvent:
    """One connect or disconnect, as the history table keeps it."""

    ts: float
    event: Connectivity
    remote: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"ts": self.ts, "event": self.event, "remote": self.remote, "reason": self.reason}


class FleetStore(StoreCore):
    # enrolment tokens

    def add_enrol_token(self, secret_hash: str, expires: float, uses: int, created_by: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO enrol_tokens (secret_hash, created, expires, uses_left, created_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (secret_hash, time.time(), expires, uses, created_by),
            )

    def enrol_refusal(self, secret_hash: str, agent_id: str, now: float) -> str | None:
        """Why the token cannot enrol this key now (``key_taken``, or the token's
        ``unknown``, ``used``, ``expired``), spending nothing; ``None``: it can. The
        check before the ``agent.enrolled`` record, which :meth:`enrol_agent` repeats."""
        agents = self._query("SELECT removed FROM agents WHERE id = ?", (agent_id,))
        if agents and not agents[0]["removed"]:
            return "key_taken"
        rows = self._query(_USES_SQL, (secret_hash,))
        return _token_refusal(rows[0] if rows else None, now)

    def enrol_agent(self, secret_hash: str, now: float, agent: AgentRecord) -> str | None:
        """Spend one use of the token and keep the agent's key in one transaction:
        both or neither. ``None`` when done, else why not (as :meth:`enrol_refusal`:
        another enrolment may have taken the last use or the key meanwhile)."""
        with self._tx() as db:
            taken = db.execute("SELECT removed FROM agents WHERE id = ?", (agent.id,)).fetchone()
            if taken is not None and not taken["removed"]:
                return "key_taken"
            refusal = _spend_token(db, secret_hash, now)
            if refusal is None:
                _upsert_agent(db, agent)
            return refusal

    # agents

    def upsert_agent(self, agent: AgentRecord) -> None:
        with self._tx() as db:
            _upsert_agent(db, agent)

    def agent(self, agent_id: str) -> AgentRecord | None:
        rows = self._query("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return agent_from_row(rows[0]) if rows else None

    def agents(self, *, with_removed: bool = False) -> list[AgentRecord]:
        sql = "SELECT * FROM agents" if with_removed else "SELECT * FROM agents WHERE removed = 0"
        return [agent_from_row(r) for r in self._query(sql)]

    def update_agent_info(
        self, agent_id: str, hostname: str, os: str, user: str, version: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE agents SET hostname = ?, os = ?, username = ?, version = ? WHERE id = ?",
                (hostname, os, user, version, agent_id),
            )

    def set_doorbell_hash(self, agent_id: str, doorbell_hash: str) -> bool:
        """Keep the sha256 of the agent's new doorbell key (the old one stops working);
        False when the agent is unknown or removed."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE agents SET doorbell_hash = ? WHERE id = ? AND removed = 0",
                (doorbell_hash, agent_id),
            )
            return cur.rowcount == 1

    def doorbell(self, agent_id: str) -> tuple[bool, str] | None:
        """Whether the agent is removed, and the hash of its doorbell key ("": none);
        None for an unknown agent."""
        rows = self._query("SELECT removed, doorbell_hash FROM agents WHERE id = ?", (agent_id,))
        return (bool(rows[0]["removed"]), str(rows[0]["doorbell_hash"])) if rows else None

    def touch_agent(self, agent_id: str, when: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (when, agent_id))

    # connectivity history (outside the audit chain: docs/audit.md)

    def record_connectivity(
        self,
        agent_id: str,
        event: Connectivity,
        remote: str,
        reason: str,
        when: float,
        *,
        keep: int = CONNECTIVITY_PER_AGENT,
    ) -> None:
        """Add one event, drop the agent's rows beyond the last ``keep``, and set
        its last-seen time: one transaction (no fsync: WAL, synchronous=NORMAL)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO agent_connectivity (agent_id, ts, event, remote, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                (agent_id, when, event, remote[:200], reason[:200]),
            )
            db.execute(
                "DELETE FROM agent_connectivity WHERE agent_id = ? AND id <= (SELECT id FROM"
                " agent_connectivity WHERE agent_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (agent_id, agent_id, keep),
            )
            db.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (when, agent_id))
            if not self.node_id:
                return
            if event == "connected":  # which node holds its tunnel (store/nodes.py)
                # the newest connect holds it: a claim written late (held up, retried)
                # never takes the row from a newer tunnel's node (the held-elsewhere fence
                # would then drop the newer tunnel, node/cluster.py)
                db.execute(
                    "INSERT INTO agent_nodes (agent_id, node_id, since) VALUES (?, ?, ?)"
                    " ON CONFLICT(agent_id) DO UPDATE SET node_id = excluded.node_id,"
                    " since = excluded.since WHERE excluded.since >= agent_nodes.since",
                    (agent_id, self.node_id, when),
                )
            else:
                db.execute(
                    "DELETE FROM agent_nodes WHERE agent_id = ? AND node_id = ?",
                    (agent_id, self.node_id),
                )

    def connectivity(self, agent_id: str, limit: int = 50) -> list[ConnectivityEvent]:
        """The agent's newest events first."""
        rows = self._query(
            "SELECT ts, event, remote, reason FROM agent_connectivity WHERE agent_id = ?"
            " ORDER BY id DESC LIMIT ?",
            (agent_id, limit),
        )
        return [ConnectivityEvent(r["ts"], r["event"], r["remote"], r["reason"]) for r in rows]

    def connectivity_counts(self, agent_id: str, since: float) -> dict[str, int]:
        rows = self._query(
            "SELECT event, count(*) AS n FROM agent_connectivity WHERE agent_id = ? AND ts >= ?"
            " GROUP BY event",
            (agent_id, since),
        )
        counts = {"connected": 0, "disconnected": 0}
        counts.update({r["event"]: int(r["n"]) for r in rows})
        return counts

    def prune_connectivity(self, now: float, days: float = CONNECTIVITY_DAYS) -> int:
        """Drop history older than ``days``; returns how many rows went."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM agent_connectivity WHERE ts < ?", (now - days * 86400,))
            return cur.rowcount

    def enrol_tokens(self) -> list[TokenSummary]:
        rows = self._query("SELECT * FROM enrol_tokens ORDER BY created DESC")
        return [
            TokenSummary(
                r["secret_hash"][:12],
                r["created"],
                r["expires"],
                r["uses_left"],
                r["created_by"],
                r["revoked"],
            )
            for r in rows
        ]

    def revoke_enrol_token(self, token_id: str, now: float) -> bool:
        """Revoked tokens also expire, so enrolment refuses them like any stale token."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET revoked = ?,"
                " expires = CASE WHEN expires < ? THEN expires ELSE ? END"
                " WHERE substr(secret_hash, 1, 12) = ? AND revoked IS NULL",
                (now, now - 1, now - 1, token_id),
            )
            return cur.rowcount >= 1

    def remove_agent(self, agent_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE agents SET removed = 1 WHERE id = ? AND removed = 0", (agent_id,)
            )
            return cur.rowcount == 1


_USES_SQL = "SELECT expires, uses_left FROM enrol_tokens WHERE secret_hash = ?"


def _token_refusal(row: Row | None, now: float) -> str | None:
    if row is None:
        return "unknown"
    if row["uses_left"] <= 0:
        return "used"
    if row["expires"] < now:
        return "expired"
    return None


def _spend_token(db: Connection, secret_hash: str, now: float) -> str | None:
    """Within ``db``'s transaction: one use of the token, or why not (checked and spent
    in one transaction: a single-use token stays so when two enrolments race)."""
    refusal = _token_refusal(db.execute(_USES_SQL, (secret_hash,)).fetchone(), now)
    if refusal is None:
        db.execute(
            "UPDATE enrol_tokens SET uses_left = uses_left - 1 WHERE secret_hash = ?",
            (secret_hash,),
        )
    return refusal


def _upsert_agent(db: Connection, agent: AgentRecord) -> None:
    db.execute(
        "INSERT INTO agents (id, public_key, hostname, os, username, version, enrolled,"
        " last_seen, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
        " ON CONFLICT(id) DO UPDATE SET hostname = excluded.hostname,"
        " os = excluded.os, username = excluded.username, version = excluded.version,"
        " enrolled = excluded.enrolled, removed = 0, doorbell_hash = ''",
        (
            agent.id,
            agent.public_key,
            agent.hostname,
            agent.os,
            agent.username,
            agent.version,
            agent.enrolled,
            agent.last_seen,
        ),
    )
