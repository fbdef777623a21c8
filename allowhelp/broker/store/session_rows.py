"""Help sessions and help requests."""

from __future__ import annotations

from allowhelp.broker.model.records import (
    HELP_SELECT,
    SESSION_SELECT,
    HelpTicket,
    row_session,
    row_ticket,
    session_row,
)
from allowhelp.broker.model.session import FINAL, Session
from allowhelp.broker.store.core import StoreCore

_FINAL = "(" + ", ".join(sorted(f"'{state.value}'" for state in FINAL)) + ")"


class SessionStore(StoreCore):
    # sessions

    def save_session(self, session: Session) -> None:
        values = session_row(session)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "id")
        with self._tx() as db:
            db.execute(
                f"INSERT INTO sessions ({columns}) VALUES ({marks})"  # noqa: S608 - fixed names
                f" ON CONFLICT(id) DO UPDATE SET {updates}"
                # A session over is never open again: a node that was cut off may still
                # owe an older state of a session another node has ended (#21).
                f" WHERE sessions.state NOT IN {_FINAL} OR excluded.state IN {_FINAL}",
                tuple(values.values()),
            )
            if self.node_id:  # which node runs it (store/nodes.py)
                db.execute(
                    "INSERT INTO session_nodes (session_id, node_id) VALUES (?, ?)"
                    " ON CONFLICT(session_id) DO NOTHING",
                    (session.id, self.node_id),
                )

    def session(self, session_id: str) -> Session | None:
        rows = self._query(SESSION_SELECT + " WHERE s.id = ?", (session_id,))
        return row_session(rows[0]) if rows else None

    def sessions(self, technician: str | None, limit: int) -> list[Session]:
        if technician is None:
            rows = self._query(SESSION_SELECT + " ORDER BY s.created DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                SESSION_SELECT + " WHERE s.technician = ? ORDER BY s.created DESC LIMIT ?",
                (technician, limit),
            )
        return [row_session(r) for r in rows]

    def open_sessions(self) -> list[Session]:
        rows = self._query(
            SESSION_SELECT + " WHERE s.state IN ('requested', 'awaiting_consent', 'active')"
        )
        return [row_session(r) for r in rows]

    # help requests

    def add_help_request(self, ticket: HelpTicket) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO help_requests (code, agent_id, message, created, expires, session_id)"
                " VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(code) DO UPDATE SET"
                " agent_id = excluded.agent_id, message = excluded.message,"
                " created = excluded.created, expires = excluded.expires, session_id = NULL",
                (ticket.code, ticket.agent_id, ticket.message, ticket.created, ticket.expires),
            )

    def help_request(self, code: str) -> HelpTicket | None:
        rows = self._query(HELP_SELECT + " WHERE h.code = ?", (code,))
        return row_ticket(rows[0]) if rows else None

    def help_requests(self, now: float) -> list[HelpTicket]:
        rows = self._query(
            HELP_SELECT + " WHERE h.expires >= ? AND h.session_id IS NULL ORDER BY h.created",
            (now,),
        )
        return [row_ticket(r) for r in rows]

    def use_help_request(self, code: str, session_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE help_requests SET session_id = ? WHERE code = ?", (session_id, code))
