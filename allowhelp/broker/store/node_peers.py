"""Where each broker node takes the other nodes' relayed sessions (#21, routing).

A node started with ``serve --node-listen`` writes the address of its node-to-node
listener here (``node/relay_listener.py``); a node that must reach an agent or a
session held by another live node reads it (``relay/node_link.py``). Only live nodes
count: a row of a node whose heartbeat stopped is never dialled. Such a node also
writes what each agent whose tunnel it holds said in its hello (``agent_live``), so
the others list that agent with the same live details.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from allowhelp.broker.model.records import SESSION_SELECT, row_session
from allowhelp.broker.model.session import Session
from allowhelp.broker.store.core import StoreCore
from allowhelp.broker.store.nodes import NODE_STALE

_OPEN = "s.state IN ('requested', 'awaiting_consent', 'active')"


@dataclass(frozen=True)
class PeerNode:
    """A live node another node may relay to: its id, its relay listener, its console URL."""

    id: str
    address: str
    https: str


@dataclass(frozen=True)
class SessionPeer:
    """The other live node running an open session, and the session as stored."""

    node: PeerNode
    session: Session


@dataclass(frozen=True)
class AgentElsewhere:
    """An agent whose tunnel another live node holds: that node, and what the agent
    said in its hello there (``agent_live``)."""

    node_id: str
    details: dict[str, object]


def _details(text: object) -> dict[str, object]:
    try:
        found = json.loads(text) if isinstance(text, str) else {}
    except ValueError:  # written by a node of ours: never, but a list must not fail
        return {}
    return found if isinstance(found, dict) else {}


class NodePeerStore(StoreCore):
    def node_peer_set(self, node_id: str, address: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO node_peers (node_id, address) VALUES (?, ?)"
                " ON CONFLICT(node_id) DO UPDATE SET address = excluded.address",
                (node_id, address),
            )

    def node_peer_gone(self, node_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM node_peers WHERE node_id = ?", (node_id,))

    def _live_peers(self, where: str, args: tuple[object, ...]) -> list[PeerNode]:
        rows = self._query(
            "SELECT n.id, p.address, n.https FROM broker_nodes n"  # noqa: S608 - fixed SQL
            f" JOIN node_peers p ON p.node_id = n.id WHERE ({where})"
            f" AND n.heartbeat >= {self._database.now_sql} - ?",
            (*args, NODE_STALE),
        )
        return [PeerNode(str(row[0]), str(row[1]), str(row[2])) for row in rows]

    def node_is_live(self, node_id: str) -> bool:
        """Whether ``node_id`` is a row of ``broker_nodes`` whose heartbeat is fresh."""
        rows = self._query(
            "SELECT 1 FROM broker_nodes WHERE id = ?"  # noqa: S608 - the clock's SQL
            f" AND heartbeat >= {self._database.now_sql} - ?",
            (node_id, NODE_STALE),
        )
        return bool(rows)

    def agent_peer(self, agent_id: str) -> PeerNode | None:
        """The other live node holding this agent's tunnel, if it takes relayed sessions."""
        found = self._live_peers(
            "n.id IN (SELECT node_id FROM agent_nodes WHERE agent_id = ?) AND n.id <> ?",
            (agent_id, self.node_id),
        )
        return found[0] if found else None

    def session_ran_by(self, session_id: str) -> PeerNode | None:
        """The other live node that ran this session, open or ended (its invitations
        were that node's, kept in its memory: an invitee's page of an ended session)."""
        found = self._live_peers(
            "n.id IN (SELECT node_id FROM session_nodes WHERE session_id = ?) AND n.id <> ?",
            (session_id, self.node_id),
        )
        return found[0] if found else None

    def session_peers(self) -> list[PeerNode]:
        """The other live nodes running at least one open session: where this node's
        technicians may have been invited (#18) into a session it does not run."""
        return self._live_peers(
            "n.id IN (SELECT sn.node_id FROM session_nodes sn"  # noqa: S608 - fixed SQL
            f" JOIN sessions s ON s.id = sn.session_id WHERE {_OPEN}) AND n.id <> ?",
            (self.node_id,),
        )

    def session_peer(self, session_id: str) -> SessionPeer | None:
        """The other live node running this open session, if it takes relayed sessions,
        with the session's row: one query for both (a relayed request asks once)."""
        rows = self._query(
            "SELECT n.id AS peer_id, p.address AS peer_address, n.https AS peer_https, "
            + SESSION_SELECT.removeprefix("SELECT ")
            + " JOIN session_nodes sn ON sn.session_id = s.id"
            " JOIN broker_nodes n ON n.id = sn.node_id JOIN node_peers p ON p.node_id = n.id"
            f" WHERE s.id = ? AND {_OPEN} AND n.id <> ?"
            f" AND n.heartbeat >= {self._database.now_sql} - ?",
            (session_id, self.node_id, NODE_STALE),
        )
        if not rows:
            return None
        row = rows[0]
        node = PeerNode(str(row["peer_id"]), str(row["peer_address"]), str(row["peer_https"]))
        return SessionPeer(node, row_session(row))

    def agent_live_set(self, agent_id: str, details: dict[str, object]) -> None:
        """What the agent whose tunnel this node holds said in its hello (for the others)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO agent_live (agent_id, node_id, details, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(agent_id) DO UPDATE SET node_id = excluded.node_id,"
                " details = excluded.details, updated = excluded.updated",
                (agent_id, self.node_id, json.dumps(details), time.time()),
            )

    def agent_live_gone(self, agent_id: str) -> None:
        """The agent's tunnel left this node (another node's row stays)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM agent_live WHERE agent_id = ? AND node_id = ?",
                (agent_id, self.node_id),
            )

    def agents_elsewhere_live(self) -> dict[str, AgentElsewhere]:
        """Each agent whose tunnel another live node holds: that node, and what the agent
        said in its hello as that node wrote it (``{}`` before it did)."""
        rows = self._query(
            "SELECT an.agent_id, an.node_id, l.details FROM agent_nodes an"  # noqa: S608
            " JOIN broker_nodes n ON n.id = an.node_id LEFT JOIN agent_live l"
            " ON l.agent_id = an.agent_id AND l.node_id = an.node_id"
            f" WHERE an.node_id <> ? AND n.heartbeat >= {self._database.now_sql} - ?",
            (self.node_id, NODE_STALE),
        )
        return {str(row[0]): AgentElsewhere(str(row[1]), _details(row[2])) for row in rows}

    def agents_elsewhere(self) -> dict[str, str]:
        """Agent id → the other live node holding its tunnel (the console lists them online)."""
        rows = self._query(
            "SELECT an.agent_id, an.node_id FROM agent_nodes an"  # noqa: S608 - the clock's SQL
            " JOIN broker_nodes n ON n.id = an.node_id"
            f" WHERE an.node_id <> ? AND n.heartbeat >= {self._database.now_sql} - ?",
            (self.node_id, NODE_STALE),
        )
        return {str(row[0]): str(row[1]) for row in rows}
