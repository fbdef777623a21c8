"""The shared database of several broker nodes: PostgreSQL through psycopg 3.

Statements arrive with SQLite's ``?`` placeholders and are spelt ``%s`` here,
once (:func:`pg_sql`). Every write transaction first takes one advisory lock
(``pg_advisory_xact_lock``), so writes from all nodes go one at a time, as
SQLite's ``BEGIN IMMEDIATE`` makes them go on one node: a check-then-update
such as a single-use enrolment token stays single-use across nodes. A lost
connection (the server restarted) is opened again on the next call; the call
that found it lost fails with ``StoreError`` (fail closed).

A connection whose far end goes silent without closing (half-open: the database's
host gone, a partition) fails the call instead of hanging it, and the calls queued
behind it: PostgreSQL stops a statement after ``STATEMENT_TIMEOUT``, this side cuts a
call still unanswered at ``CALL_DEADLINE`` (``pglink.py``), and TCP keepalives
and ``tcp_user_timeout`` let the kernel notice a peer that is gone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.rows

from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.database import PostgresUrl, Row
from allowhelp.broker.pglink import CALL_DEADLINE, DEADLINES, PROBE_DEADLINE, link_options
from allowhelp.broker.store.database import BUSY_TIMEOUT, Connection, DuplicateRow
from allowhelp.broker.store.pg_migrations import PG_MIGRATIONS

# pg_advisory_xact_lock keys: all store writes; schema migrations.
WRITE_LOCK = 0x61680001
MIGRATE_LOCK = 0x61680002
# Seconds a connection may sit unused before its next use checks it is still alive.
IDLE_PROBE = 1.0
# Seconds PostgreSQL lets one statement run (``statement_timeout``; migrations: none).
STATEMENT_TIMEOUT = 10.0
# CALL_DEADLINE, PROBE_DEADLINE and the keepalives: ``pglink.py`` (the audit's too).


_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|%")


def _spell(match: re.Match[str]) -> str:
    found = match.group()
    if found == "?":
        return "%s"
    return found.replace("%", "%%")  # a literal, or a bare %: psycopg's escape


def pg_sql(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s``; a ``?`` inside a quoted
    literal stays, and every literal ``%`` is doubled."""
    return _TOKENS.sub(_spell, sql)


def pg_args(args: Sequence[Any]) -> tuple[Any, ...]:
    """Flags are stored as 0/1 integers, as in SQLite."""
    return tuple(int(a) if isinstance(a, bool) else a for a in args)


def connect(url: PostgresUrl, *, read_only: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection in autocommit (transactions are explicit), with lock, statement
    and connect timeouts and TCP keepalives, so a stuck server or a silent network
    fails a call instead of hanging it."""
    options = (
        f"-c lock_timeout={int(BUSY_TIMEOUT * 1000)}"
        f" -c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
    )
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        return psycopg.connect(
            url.url,
            autocommit=True,
            connect_timeout=max(1, int(BUSY_TIMEOUT)),
            options=options,
            application_name="allowhelp-broker",
            **link_options(),
            **kwargs,
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach the database {url}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _error(exc: psycopg.Error) -> StoreError:
    if isinstance(exc, psycopg.errors.IntegrityError):
        return DuplicateRow(f"database error: {first_line(exc)}")
    return StoreError(f"database error: {first_line(exc)}")


class _Translated:
    """A psycopg connection that takes ``?`` statements (``Connection``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(pg_sql(sql), pg_args(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(pg_sql(sql), [pg_args(row) for row in rows])


class PgRow(tuple[Any, ...]):
    """A row by position or by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def pg_row(cursor: psycopg.Cursor[Any]) -> psycopg.rows.RowMaker[PgRow]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row

    return make


class PostgresDatabase:
    """One psycopg connection, opened again after the server dropped it."""

    def __init__(self, url: PostgresUrl, *, read_only: bool) -> None:
        self.url = url
        self._read_only = read_only
        self._conn: psycopg.Connection[PgRow] | None = None
        self._used = 0.0
        self._expired = 0.0  # the deadline (s) the call failing now ran past, if it did

    @property
    def where(self) -> str:
        return str(self.url)

    @property
    def now_sql(self) -> str:
        return "extract(epoch FROM clock_timestamp())::double precision"

    @classmethod
    def open(cls, url: PostgresUrl, *, read_only: bool = False) -> PostgresDatabase:
        database = cls(url, read_only=read_only)
        conn = database._connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                conn.execute("SET LOCAL statement_timeout = 0")  # a migration takes its time
                database._migrate(conn, check_only=read_only)
        except psycopg.Error as exc:
            database.close()
            raise StoreError(f"cannot open the broker database {url}: {first_line(exc)}") from exc
        except BaseException:
            database.close()
            raise
        return database

    def _connection(self, *, probe: bool = False) -> psycopg.Connection[PgRow]:
        """The connection, opened again when lost. One idle for a while (or any,
        with ``probe``: before a write) is asked ``SELECT 1`` first: a server
        restarted since has dropped it, and a write must not be what finds out. One
        that does not answer at all fails the call (opening another would wait again)."""
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken) and (probe or self._idle()):
            try:
                with self._deadline(conn, PROBE_DEADLINE):
                    conn.execute("SELECT 1")
            except psycopg.Error:
                conn.close()
                if self._expired:
                    raise
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = conn = connect(self.url, read_only=self._read_only, row_factory=pg_row)
        self._used = time.monotonic()
        return conn

    def _idle(self) -> bool:
        return time.monotonic() - self._used > IDLE_PROBE

    @contextmanager
    def _deadline(
        self, conn: psycopg.Connection[PgRow], seconds: float = CALL_DEADLINE
    ) -> Iterator[None]:
        """Cut ``conn`` if what runs inside takes over ``seconds`` (``pglink.py``);
        the failure it causes then says so (``_failed``)."""
        self._expired = 0.0
        token = DEADLINES.arm(conn.fileno(), seconds)
        try:
            yield
        except BaseException:
            if DEADLINES.disarm(token):
                self._expired = seconds
            raise
        if DEADLINES.disarm(token):  # answered as it was cut: the connection is no more
            self.close()

    def _migrate(self, conn: psycopg.Connection[PgRow], *, check_only: bool) -> None:
        found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        version = 0
        if found is not None and found[0]:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0]) if row is not None and row[0] is not None else 0
        elif not check_only:
            conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
        if version > len(PG_MIGRATIONS):
            raise StoreError(
                f"the database {self.url} has schema version {version}, newer than this "
                f"allowhelp ({len(PG_MIGRATIONS)}): upgrade allowhelp"
            )
        if check_only:
            if version < len(PG_MIGRATIONS):
                raise StoreError(f"the database {self.url} is not migrated yet")
            return
        for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
            conn.execute(script.encode())  # several statements: no parameters, one round trip
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    def _failed(self, exc: psycopg.Error) -> StoreError:
        """The StoreError for ``exc``; a connection-level failure also drops the
        connection, so the next call opens a fresh one instead of failing too."""
        expired, self._expired = self._expired, 0.0
        if expired:
            self.close()
            return StoreError(
                f"the database did not answer within {expired:g} s (a silent connection:"
                " dropped, opened again on the next call)"
            )
        if isinstance(exc, psycopg.OperationalError):
            self.close()
        return _error(exc)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def check_writable(self) -> None:
        """Take the write lock in a transaction and let it go: nothing written."""
        try:
            conn = self._connection(probe=True)
            with self._deadline(conn), conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        try:
            conn = self._connection(probe=True)
            with self._deadline(conn), conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                yield _Translated(conn)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read; asked again once on a fresh connection when the old one was lost."""
        statement, values = pg_sql(sql), pg_args(args)
        try:
            return self._read(statement, values)
        except psycopg.OperationalError as exc:
            if self._expired:  # no answer at all: asking again would wait as long again
                raise self._failed(exc) from exc
            self.close()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        try:
            return self._read(statement, values)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def _read(self, statement: str, values: tuple[Any, ...]) -> list[Row]:
        conn = self._connection()
        with self._deadline(conn):
            return list(conn.execute(statement, values).fetchall())
