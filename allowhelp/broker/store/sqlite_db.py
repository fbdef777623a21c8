"""The embedded database: one SQLite file in the data folder, WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.database import Row
from allowhelp.broker.store.database import BUSY_TIMEOUT, Connection, DuplicateRow
from allowhelp.broker.store.migrations import MIGRATIONS


def _error(exc: sqlite3.Error, what: str = "database error") -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return DuplicateRow(f"{what}: {exc}")
    return StoreError(f"{what}: {exc}")


class SqliteDatabase:
    """``broker.sqlite3``: migrated at open (or, read-only, only checked)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> SqliteDatabase:
        """Open the database; migrate it, or (``read_only``) only check its version
        and refuse writes on this connection (``PRAGMA query_only``)."""
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            conn.row_factory = sqlite3.Row
            if read_only:
                conn.execute("PRAGMA query_only=ON")
            else:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            database = cls(conn, path)
            database._migrate(check_only=read_only)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the broker database {path}: {exc}") from exc
        if not read_only:
            path.chmod(0o600)
        return database

    def close(self) -> None:
        self._conn.close()

    def check_writable(self) -> None:
        """Take the write lock and let it go (``BEGIN IMMEDIATE; ROLLBACK``)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def _migrate(self, *, check_only: bool = False) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database {self.path} has schema version {version}, newer than this "
                f"allowhelp ({len(MIGRATIONS)}): upgrade allowhelp"
            )
        if check_only:
            if version < len(MIGRATIONS):
                raise StoreError(f"the database {self.path} is not migrated yet")
            return
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._conn.executescript(
                f"BEGIN IMMEDIATE;{script};PRAGMA user_version={number};COMMIT;"
            )

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        try:
            return list(self._conn.execute(sql, args))
        except sqlite3.Error as exc:
            raise _error(exc) from exc
