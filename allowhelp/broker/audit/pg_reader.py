"""Reading the audit chain in PostgreSQL: the connection, the schema check, and a
read-only ``ChainReader`` (``audit verify|head|export --store``). The writer is
``pg_chain.py``; both take the record format from ``format.py``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from allowhelp.broker.audit.entry import unavailable
from allowhelp.broker.audit.format import SCHEMA_VERSION
from allowhelp.broker.errors import AuditCorrupt
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.pglink import link_options


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


class _Reader:
    """``ChainReader`` on PostgreSQL: ``?`` statements, errors as AuditUnavailable."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: tuple[Any, ...] = (), /) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(sql.replace("?", "%s"), args)
        except psycopg.Error as exc:
            raise unavailable(reason(exc)) from exc

    def close(self) -> None:
        self._conn.close()


def open_reader(url: PostgresUrl, timeout: float = 5.0) -> _Reader:
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
    return _Reader(conn)
