"""The audit log: every security-relevant broker action, in a hash chain.

The help desk must be able to show, months later, who looked at which PC, when
and with whose permission, and prove that nobody edited the record since. So:

* this module is the only writer, and a record is committed (fsynced, WAL with
  ``synchronous=FULL``) before :meth:`AuditLog.append` or :meth:`AuditLog.write`
  returns; a caller that gets :class:`AuditUnavailable` must refuse the action
  (fail closed);
* each record carries the SHA-256 of its own canonical JSON and the hash of the
  record before it, so an edit, a deletion or a reordering breaks the chain
  where it happened; cutting records off the end is caught by comparing with a
  head (``SEQ:HASH``) saved elsewhere, e.g. by the syslog collector;
* triggers refuse UPDATE and DELETE, so a bug cannot rewrite history by accident.

Group commit, forwarding to syslog and anchors, and refusing when a commit
fails are :mod:`allowhelp.broker.audit.writer`'s (``ChainWriter``, which
:class:`AuditLog` extends with the SQLite file). The chain format and the
read-only side (:func:`verify`, :func:`read_head`, :func:`read_records`) are in
:mod:`allowhelp.broker.audit.chain`, re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.broker.audit.chain import (
    GENESIS_HASH,
    LAST_SQL,
    SCHEMA_VERSION,
    SELECT_SQL,
    AuditRecord,
    VerifyResult,
    check_schema,
    read_head,
    read_records,
    record_hash,
    row_to_record,
    verify,
)
from allowhelp.broker.audit.codes import EVENT_CODES
from allowhelp.broker.audit.entry import Entry, chain_on, plain_reason, unavailable
from allowhelp.broker.audit.writer import CHANGE_ROUNDS, ChainWriter
from allowhelp.broker.errors import AuditCorrupt

if TYPE_CHECKING:
    from allowhelp.broker.audit.anchor_sink import AnchorSink
    from allowhelp.broker.audit.syslog import SyslogForwarder

__all__ = [
    "EVENT_CODES",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "AuditLog",
    "AuditRecord",
    "VerifyResult",
    "read_head",
    "read_records",
    "record_hash",
    "verify",
]

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO audit (seq, ts, type, code, actor, target, details, prev_hash, hash)"
    " VALUES (:seq, :ts, :type, :code, :actor, :target, :details_text, :prev_hash, :hash)"
)
_SCHEMA = (
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL,"
    " code TEXT NOT NULL, actor TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class AuditLog(ChainWriter):
    """The one writer of the audit file; safe to share between threads and tasks."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        forwarder: SyslogForwarder | None,
        busy_timeout: float,
        anchors: AnchorSink | None = None,
    ) -> None:
        self._conn = conn
        self._file = path
        self._setup(path, forwarder, busy_timeout, anchors)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        forwarder: SyslogForwarder | None = None,
        busy_timeout: float = 2.0,
        anchors: AnchorSink | None = None,
        _read_only: bool = False,
    ) -> AuditLog:
        """Open or create the log.

        ``_read_only`` is for tests only: it opens the file exactly as SQLite
        opens one the process may not write (it falls back to read-only), which
        root cannot otherwise reproduce with chmod.
        """
        path = Path(path)
        target = f"{path.resolve().as_uri()}?mode=ro" if _read_only else str(path)
        conn: sqlite3.Connection | None = None
        try:
            if not _read_only:
                # Details may hold users' words: owner-only. SQLite gives the
                # -wal and -shm files the same mode as the database.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(
                target,
                uri=_read_only,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            if check_schema(conn, path) == 0:
                conn.execute("BEGIN IMMEDIATE")
                # Another process may have created it while we waited for the lock.
                # (executescript would COMMIT first, so one statement at a time.)
                if check_schema(conn, path) == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                conn.execute("COMMIT")
            if not _read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except AuditCorrupt:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise unavailable(plain_reason(exc, busy_timeout)) from exc
        except OSError as exc:
            raise unavailable(f"the audit file cannot be created ({exc.strerror or exc})") from exc
        audit = cls(conn, path, forwarder, busy_timeout, anchors)
        if anchors is not None:
            anchors.start_at(audit.head()[0])
        return audit

    def check_writable(self, busy_timeout: float) -> str | None:
        """Why the log cannot take a record now, or None when it can.

        Takes the write lock on a connection of its own and lets it go
        (``BEGIN IMMEDIATE; ROLLBACK``): no record, nothing written, as
        ``/healthz`` needs (monitoring polls it; a record per probe would flood
        the chain). Blocks up to ``busy_timeout``: call it off the event loop.
        """
        try:
            conn = sqlite3.connect(self._file, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            return plain_reason(exc, busy_timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return plain_reason(exc, busy_timeout)
        finally:
            conn.close()
        return None

    def _commit(self, entries: Sequence[Entry]) -> list[AuditRecord]:
        """All of ``entries`` in one transaction (one fsync), or none of them."""
        conn = self._conn
        try:
            # IMMEDIATE takes the write lock before reading the last row, so two
            # processes on one file cannot both claim the same seq.
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute(LAST_SQL).fetchone()
            seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
            records, rows = chain_on(entries, seq, prev)
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            reason = plain_reason(exc, self._busy_timeout)
            kinds = ", ".join(sorted({entry.type for entry in entries}))
            log.warning("audit batch of %d (%s) refused: %s", len(entries), kinds, reason)
            raise unavailable(reason) from exc
        except BaseException:  # a fault of ours: no half transaction holds the lock after it
            self._rollback()
            raise
        return records

    def _rollback(self) -> None:
        """Leave no half transaction behind, so the next batch starts clean."""
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("audit rollback failed", exc_info=True)

    def head(self) -> tuple[int, str]:
        with self._lock:
            try:
                row = self._conn.execute(LAST_SQL).fetchone()
            except sqlite3.Error as exc:
                raise unavailable(plain_reason(exc, self._busy_timeout)) from exc
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def records(self, after: int = 0, limit: int | None = None) -> list[AuditRecord]:
        sql = f"{SELECT_SQL} WHERE seq > ? ORDER BY seq LIMIT ?"
        with self._lock:
            try:
                rows = self._conn.execute(sql, (after, -1 if limit is None else limit)).fetchall()
            except sqlite3.Error as exc:
                raise unavailable(plain_reason(exc, self._busy_timeout)) from exc
        return [row_to_record(row) for row in rows]

    def _close_connection(self) -> None:
        with self._lock:
            if self._anchors is not None:
                self._anchor_at_stop(self._anchors)
            self._conn.close()

    def _anchor_at_stop(self, anchors: AnchorSink) -> None:
        """The stop anchor (every back end's); an anchor file it finds changed is
        chained now (the connection is still open), and that record's head is the stop
        anchor."""
        for _ in range(CHANGE_ROUNDS):
            head = self._stop_head()
            if head is None:
                return
            anchors.at_stop(*head)
            changes = anchors.take_changes()
            if not changes:
                return
            self._chain_changes(changes)

    def _stop_head(self) -> tuple[int, str] | None:
        """The head to anchor at close; None when there is none (or it cannot be read)."""
        try:
            row = self._conn.execute(LAST_SQL).fetchone()
        except sqlite3.Error as exc:
            log.warning("audit head not anchored at close: %s", exc)
            return None
        return None if row is None else (int(row[0]), str(row[1]))
