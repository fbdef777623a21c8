"""The one seam between the store and its database: SQLite or PostgreSQL.

``Store`` methods write SQL once, with ``?`` placeholders, in the dialect both
speak (``ON CONFLICT ... DO UPDATE``, ``coalesce``, ``CASE``); a
:class:`Database` runs it. Each implementation is the one place its library's
errors become :class:`~allowhelp.broker.errors.StoreError` and the one place
placeholders are spelt as its library wants. Rows answer by position and by
column name (:class:`~allowhelp.broker.model.database.Row`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.database import Row

# Seconds a call waits for another connection's lock (SQLite's busy timeout,
# PostgreSQL's lock_timeout) or for a connection, before it fails with StoreError.
BUSY_TIMEOUT = 5.0


class DuplicateRow(StoreError):
    """A row with that key exists already (a unique constraint refused it)."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a transaction hands its body: statements with ``?`` placeholders."""

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


class Database(Protocol):
    """One connection to the broker database, used from one thread at a time."""

    @property
    def where(self) -> str:
        """The database for messages (a path, or a URL without its password)."""
        ...

    @property
    def now_sql(self) -> str:
        """SQL for the database's clock in Unix seconds: nodes compare heartbeats
        by one clock, so a node whose own clock is off is not taken for dead."""
        ...

    def tx(self) -> AbstractContextManager[Connection]:
        """A write transaction: committed when the body returns, rolled back if it raises."""
        ...

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    def check_writable(self) -> None:
        """Raise StoreError when a write could not go ahead now; writes nothing."""
        ...

    def close(self) -> None: ...
