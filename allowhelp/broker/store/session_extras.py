"""What a help session gathers besides its row: chat, file transfers, its report.

``session_messages`` is the chat transcript, ``file_transfers`` every file
that went to or came from the PC, ``report_outbox`` the session reports owed
to the ticket system (``sessions/report.py``): a row stays until delivered,
so a report survives a broker restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from allowhelp.broker.model.database import Row
from allowhelp.broker.store.core import StoreCore


@dataclass(frozen=True)
class ChatLine:
    sender: str  # "technician:NAME" or "user@AGENT_ID"
    text: str
    ts: float

    def to_json(self) -> dict[str, object]:
        return {"from": self.sender, "text": self.text, "ts": self.ts}


@dataclass(frozen=True)
class TransferRecord:
    session_id: str
    path: str
    direction: str  # upload | download
    size: int
    sha256: str | None
    ok: bool
    error: str
    started: float
    ended: float

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "direction": self.direction,
            "size": self.size,
            "sha256": self.sha256,
            "ok": self.ok,
            "error": self.error,
            "started": self.started,
            "ended": self.ended,
        }


@dataclass(frozen=True)
class OutboxItem:
    id: int
    session_id: str
    body: bytes
    created: float
    attempts: int
    next_attempt: float
    last_error: str
    delivered: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "created": self.created,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "delivered": self.delivered,
        }


class SessionExtrasStore(StoreCore):
    # chat

    def add_chat_line(self, session_id: str, line: ChatLine) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO session_messages (session_id, sender, text, ts) VALUES (?, ?, ?, ?)",
                (session_id, line.sender, line.text, line.ts),
            )

    def chat_lines(self, session_id: str, limit: int = 10_000) -> list[ChatLine]:
        rows = self._query(
            "SELECT sender, text, ts FROM session_messages WHERE session_id = ? ORDER BY id"
            " LIMIT ?",
            (session_id, limit),
        )
        return [ChatLine(r["sender"], r["text"], r["ts"]) for r in rows]

    def chat_count(self, session_id: str) -> int:
        rows = self._query(
            "SELECT count(*) AS n FROM session_messages WHERE session_id = ?", (session_id,)
        )
        return int(rows[0]["n"])

    # file transfers

    def add_transfer(self, record: TransferRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO file_transfers (session_id, path, direction, size, sha256, ok, error,"
                " started, ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.session_id,
                    record.path,
                    record.direction,
                    record.size,
                    record.sha256,
                    int(record.ok),
                    record.error,
                    record.started,
                    record.ended,
                ),
            )

    def transfers(self, session_id: str) -> list[TransferRecord]:
        rows = self._query(
            "SELECT * FROM file_transfers WHERE session_id = ? ORDER BY id", (session_id,)
        )
        return [
            TransferRecord(
                r["session_id"],
                r["path"],
                r["direction"],
                r["size"],
                r["sha256"],
                bool(r["ok"]),
                r["error"],
                r["started"],
                r["ended"],
            )
            for r in rows
        ]

    # the report outbox

    def queue_report(self, session_id: str, body: bytes, now: float) -> None:
        """Owe the report once (a second end of the same session changes nothing)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO report_outbox (session_id, body, created, next_attempt)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (session_id, body, now, now),
            )

    def due_reports(self, now: float, limit: int = 20) -> list[OutboxItem]:
        rows = self._query(
            "SELECT * FROM report_outbox WHERE delivered IS NULL AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (now, limit),
        )
        return [_item(r) for r in rows]

    def next_report_due(self) -> float | None:
        rows = self._query(
            "SELECT min(next_attempt) AS due FROM report_outbox WHERE delivered IS NULL"
        )
        due = rows[0]["due"]
        return None if due is None else float(due)

    def report_delivered(self, item_id: int, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE report_outbox SET delivered = ?, attempts = attempts + 1,"
                " last_error = '' WHERE id = ?",
                (now, item_id),
            )

    def report_failed(self, item_id: int, error: str, next_attempt: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE report_outbox SET attempts = attempts + 1, last_error = ?,"
                " next_attempt = ? WHERE id = ?",
                (error, next_attempt, item_id),
            )

    def retry_reports_now(self, now: float) -> int:
        """A broker start tries every undelivered report at once (its backoff was the
        old process's); how many are owed."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE report_outbox SET next_attempt = ? WHERE delivered IS NULL", (now,)
            )
            return int(cursor.rowcount)

    def reports(self, limit: int = 200) -> list[OutboxItem]:
        """Newest first: what an admin looks at (undelivered ones first)."""
        rows = self._query(
            "SELECT * FROM report_outbox ORDER BY delivered IS NOT NULL, created DESC LIMIT ?",
            (limit,),
        )
        return [_item(r) for r in rows]


def _item(row: Row) -> OutboxItem:
    return OutboxItem(
        row["id"],
        row["session_id"],
        bytes(row["body"]),
        row["created"],
        row["attempts"],
        row["next_attempt"],
        row["last_error"],
        row["delivered"],
    )
