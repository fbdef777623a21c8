"""Reading the audit chain in PostgreSQL: the connection, the schema check, and a
read-only ``ChainReader`` (``audit verify|head|export --store``). The writer is
``pg_chain.py``; both take the record format from ``format.py``.

A walk or an export reads the chain in pages of :data:`PAGE` records
(:meth:`PgReader.rows`: keyset on ``seq``, each query starting after the last
seq the one before returned): psycopg's client cursor holds a query's whole
result, so one ``SELECT`` of a chain of millions would hold all of it in memory.
A page is one primary-key range scan; the walk ends at the head the chain had
when it began, as a single ``SELECT`` would. A page bound relies on that key:
with it dropped, a second row with a seq already read would never be asked for,
so a reader refuses a table without it before its first page
(:meth:`PgReader.check_seq_key`): ``verify`` and ``export`` alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from allowhelp.broker.audit.entry import unavailable
from allowhelp.broker.audit.format import LAST_SQL, SCHEMA_VERSION, SELECT_SQL
from allowhelp.broker.errors import AuditCorrupt
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.pglink import link_options

PAGE = 2000  # records a query of a walk or an export reads: what memory holds at once
_PAGE_SQL = f"{SELECT_SQL} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
# The audit table's primary key, on seq alone: what keeps a page bound from hiding a row.
_KEY_SQL = (
    "SELECT 1 FROM pg_constraint c JOIN pg_attribute a"
    " ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
    " WHERE c.conrelid = 'audit'::regclass AND c.contype = 'p'"
    " AND cardinality(c.conkey) = 1 AND a.attname = 'seq'"
)


def reason(exc: psycopg.Error) -> str:
    """The first line of what the server or libpq said: what an operator acts on."""
    lines = str(exc).strip().splitlines()
    return f"the audit database: {lines[0] if lines else type(exc).__name__}"


def connect(
    url: PostgresUrl, timeout: float, *, read_only: bool = False
) -> psycopg.Connection[Any]:
    options = f"-c lock_timeout={int(timeout * 1000)}"
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        return psycopg.connect(
            url.url,
            autocommit=True,
            connect_timeout=max(1, round(timeout)),
            options=options,
            application_name="allowhelp-audit",
            **link_options(),  # a silent link fails, as the store's (pglink.py)
        )
    except psycopg.Error as exc:
        raise unavailable(f"cannot reach {url}: {reason(exc)}") from exc


def schema_version(conn: psycopg.Connection[Any], url: PostgresUrl) -> int:
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name IN ('audit', 'audit_schema')"
        )
    }
    if not tables:
        return 0
    if tables != {"audit", "audit_schema"}:
        raise AuditCorrupt(f"{url} has a partial audit schema (tables: {sorted(tables)})")
    row = conn.execute("SELECT max(version) FROM audit_schema").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    if version != SCHEMA_VERSION:
        raise AuditCorrupt(
            f"{url} has audit schema version {version}; this broker reads version {SCHEMA_VERSION}"
        )
    return version


class PgReader:
    """``ChainReader`` on PostgreSQL: ``?`` statements, errors as AuditUnavailable."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._key_checked = False  # the primary key on seq, looked for once per reader

    def execute(self, sql: str, args: tuple[Any, ...] = (), /) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(sql.replace("?", "%s"), args)
        except psycopg.Error as exc:
            raise unavailable(reason(exc)) from exc

    def rows(self, after: int, upto: int | None = None) -> Iterator[tuple[Any, ...]]:
        """The rows after seq ``after`` up to ``upto`` (else the head as it is now), in
        seq order, :data:`PAGE` a query: no more than a page is held at once. A table
        without its primary key on seq is refused before the first page (an export
        as a walk: :meth:`check_seq_key`)."""
        if not self._key_checked:
            self.check_seq_key()
        if upto is None:
            last = self.execute(LAST_SQL).fetchone()
            upto = int(last[0]) if last else after
        while after < upto:
            page: list[tuple[Any, ...]] = self.execute(_PAGE_SQL, (after, upto, PAGE)).fetchall()
            yield from page
            if len(page) < PAGE:
                return
            after = int(page[-1][0])
            del page  # the next page is not read while this one is still held

    def check_seq_key(self) -> None:
        """Refuse a walk or an export of a table whose primary key on ``seq`` is gone
        (its owner can drop it): a second row with a seq already met would sit unseen
        at a page bound, as pages ask for the seqs after the last one read."""
        row = self.execute(_KEY_SQL).fetchone()
        if row is None:
            raise AuditCorrupt(
                "the audit table has no primary key on seq (it was dropped): two records "
                "could share a seq unseen, so the chain cannot be verified or exported; "
                "restore the key (ALTER TABLE audit ADD PRIMARY KEY (seq)) or restore a backup"
            )
        self._key_checked = True

    def close(self) -> None:
        self._conn.close()


def open_reader(url: PostgresUrl, timeout: float = 5.0) -> PgReader:
    """Read-only, schema checked: ``audit verify --store`` can never change the evidence."""
    conn = connect(url, timeout, read_only=True)
    try:
        if schema_version(conn, url) == 0:
            raise AuditCorrupt(f"{url} holds no audit log yet")
    except psycopg.Error as exc:
        conn.close()
        raise unavailable(reason(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return PgReader(conn)
