"""The store's connection: WAL mode, versioned migrations, transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store.migrations import MIGRATIONS

# Seconds a call waits for another connection's lock before it fails with
# StoreError. The broker makes its calls on the store's own threads
# (``worker.py``), so the wait holds up only the calls queued behind it.
BUSY_TIMEOUT = 5.0


class StoreCore:
    """The connection, the schema and the one place sqlite3 errors become StoreError."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> Self:
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
            store = cls(conn, path)
            store._migrate(check_only=read_only)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the broker database {path}: {exc}") from exc
        if not read_only:
            path.chmod(0o600)
        return store

    def close(self) -> None:
        self._conn.close()

    def check_writable(self) -> None:
        """Take the write lock and let it go (``BEGIN IMMEDIATE; ROLLBACK``):
        nothing written; ``StoreError`` when a write could not go ahead now
        (``/healthz``, on the writer's thread)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._conn.execute(sql, args))
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
