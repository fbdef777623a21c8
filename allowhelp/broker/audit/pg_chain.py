"""The audit chain in PostgreSQL, shared by every broker node: one chain, never a fork.

Each commit takes one advisory lock for the duration of its transaction
(``pg_advisory_xact_lock``), reads the head and appends after it, so appends
from all nodes and all command-line tools line up one after another; the
primary key on ``seq`` would refuse a second record with the same seq even
without the lock. Triggers refuse UPDATE, DELETE and TRUNCATE, as SQLite's do.
A commit returns once PostgreSQL has it on disk (``synchronous_commit`` on,
its default). A lost connection is opened again on the next commit; the batch
that found it lost is refused (fail closed). A connection that goes silent without
closing (half-open) is cut at ``CALL_DEADLINE`` (``pglink.py``), as the store's: the
batch is refused then, and the action it was for stops, instead of hanging on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from allowhelp.broker.audit.entry import Entry, chain_on, unavailable
from allowhelp.broker.audit.format import (
    GENESIS_HASH,
    LAST_SQL,
    SCHEMA_VERSION,
    SELECT_SQL,
    AuditRecord,
    row_to_record,
)
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.pg_reader import connect, reason, schema_version
from allowhelp.broker.errors import AuditUnavailable
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.pglink import CALL_DEADLINE, PROBE_DEADLINE, Watch, watched

if TYPE_CHECKING:
    from allowhelp.broker.audit.anchor_sink import AnchorSink
    from allowhelp.broker.audit.syslog import SyslogForwarder

log = logging.getLogger(__name__)

AUDIT_LOCK = 0x61680003  # pg_advisory_xact_lock key of audit appends
IDLE_PROBE = 1.0  # seconds unused before a connection is checked (postgres_db.py)
_SCHEMA = """
CREATE TABLE audit (seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL,
    code TEXT NOT NULL, actor TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TABLE audit_schema (version BIGINT NOT NULL);
"""
_INSERT = (
    "INSERT INTO audit (seq, ts, type, code, actor, target, details, prev_hash, hash)"
    " VALUES (%(seq)s, %(ts)s, %(type)s, %(code)s, %(actor)s, %(target)s, %(details_text)s,"
    " %(prev_hash)s, %(hash)s)"
)


class PgAuditLog(AuditLog):
    """:class:`AuditLog` (its writer thread, group commit, forwarding, anchors)
    over PostgreSQL: only the methods that touch the connection differ."""

    def __init__(
        self,
        url: PostgresUrl,
        forwarder: SyslogForwarder | None,
        busy_timeout: float,
        anchors: AnchorSink | None,
    ) -> None:
        self._url = url
        self._pg: psycopg.Connection[Any] | None = None
        self._used = 0.0
        self._setup(url, forwarder, busy_timeout, anchors)

    @classmethod
    def open_url(
        cls,
        url: PostgresUrl,
        *,
        forwarder: SyslogForwarder | None = None,
        busy_timeout: float = 2.0,
        anchors: AnchorSink | None = None,
    ) -> PgAuditLog:
        audit = cls(url, forwarder, busy_timeout, anchors)
        conn = audit._connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
                if schema_version(conn, url) == 0:
                    conn.execute(_SCHEMA.encode())
                    conn.execute(
                        "INSERT INTO audit_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
        except psycopg.Error as exc:
            conn.close()
            raise unavailable(reason(exc)) from exc
        except BaseException:
            conn.close()
            raise
        if anchors is not None:
            anchors.start_at(audit.head()[0])
        return audit

    def _connection(self, *, probe: bool = False) -> psycopg.Connection[Any]:
        """The connection, opened again when lost. One idle for a while (or any,
        with ``probe``: before a write) is asked ``SELECT 1`` first: a server
        restarted since has dropped it, and a write must not be what finds out."""
        conn = self._pg
        if conn is not None and not (conn.closed or conn.broken) and (probe or self._idle()):
            try:
                with watched(conn.fileno(), PROBE_DEADLINE):
                    conn.execute("SELECT 1")
            except psycopg.Error:
                conn.close()
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._pg = conn = connect(self._url, self._busy_timeout)
        self._used = time.monotonic()
        return conn

    def _idle(self) -> bool:
        return time.monotonic() - self._used > IDLE_PROBE

    def check_writable(self, busy_timeout: float) -> str | None:
        """Take the append lock on a connection of its own and let it go."""
        try:
            conn = connect(self._url, busy_timeout)
        except AuditUnavailable as exc:
            return str(exc)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        except psycopg.Error as exc:
            return reason(exc)
        finally:
            conn.close()
        return None

    def _commit(self, entries: Sequence[Entry]) -> list[AuditRecord]:
        """All of ``entries`` after the chain's head, in one transaction, or none."""
        watch = Watch()
        try:
            conn = self._connection(probe=True)
            with (
                watched(conn.fileno(), CALL_DEADLINE) as watch,
                conn.transaction(),
                conn.cursor() as cursor,
            ):
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
                last = cursor.execute(LAST_SQL).fetchone()
                seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
                records, rows = chain_on(entries, seq, prev)
                cursor.executemany(_INSERT, rows)
        except AuditUnavailable as exc:
            self._refused(entries, str(exc))
            raise
        except psycopg.Error as exc:
            why = self._failed(exc, watch)
            self._refused(entries, why)
            raise unavailable(why) from exc
        self._spent(watch)
        return records

    def _failed(self, exc: psycopg.Error, watch: Watch) -> str:
        """What a failed call says, its connection dropped when that was the cause."""
        self._drop(exc)
        if watch.struck:
            return f"the audit database did not answer within {CALL_DEADLINE:.0f} s"
        return reason(exc)

    def _spent(self, watch: Watch) -> None:
        """A call answered just as its deadline cut the connection: it is no more."""
        if watch.struck and self._pg is not None:
            self._pg.close()
            self._pg = None

    def _drop(self, exc: psycopg.Error) -> None:
        """A connection-level failure: the next commit opens a fresh connection."""
        if isinstance(exc, psycopg.OperationalError) and self._pg is not None:
            self._pg.close()
            self._pg = None

    def _refused(self, entries: Sequence[Entry], why: str) -> None:
        kinds = ", ".join(sorted({entry.type for entry in entries}))
        log.warning("audit batch of %d (%s) refused: %s", len(entries), kinds, why)

    def _rollback(self) -> None:
        """``conn.transaction()`` rolled back already when its body raised."""

    def head(self) -> tuple[int, str]:
        with self._lock:
            return self.head_unlocked()

    def records(self, after: int = 0, limit: int | None = None) -> list[AuditRecord]:
        sql = f"{SELECT_SQL} WHERE seq > %s ORDER BY seq LIMIT %s"
        with self._lock:
            rows = self._query(sql, (after, limit))
        return [row_to_record(tuple(row)) for row in rows]

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        """One read under ``CALL_DEADLINE`` (``pglink.py``), as a commit: a silent
        connection fails it instead of holding the lock, and the writer, for good."""
        watch = Watch()
        try:
            conn = self._connection()
            with watched(conn.fileno(), CALL_DEADLINE) as watch:
                rows = conn.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            raise unavailable(self._failed(exc, watch)) from exc
        self._spent(watch)
        return rows

    def _close_connection(self) -> None:
        with self._lock:
            if self._anchors is not None:
                self._anchor_at_stop(self._anchors)  # a change it finds is chained first
            conn, self._pg = self._pg, None
            if conn is not None:
                conn.close()

    def _stop_head(self) -> tuple[int, str] | None:
        try:
            head = self.head_unlocked()
        except AuditUnavailable as exc:
            log.warning("audit head not anchored at close: %s", exc)
            return None
        return head if head[0] else None

    def head_unlocked(self) -> tuple[int, str]:
        rows = self._query(LAST_SQL)
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)
