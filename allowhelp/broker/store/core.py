"""The store's connection: SQLite (``sqlite_db.py``) or PostgreSQL (``postgres_db.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Self

from allowhelp.broker.model.database import PostgresUrl, Row
from allowhelp.broker.store.database import BUSY_TIMEOUT, Connection, Database

__all__ = ["BUSY_TIMEOUT", "StoreCore", "StorePlace"]

# Where the store lives: the SQLite file, or a PostgreSQL database shared by nodes.
StorePlace = Path | PostgresUrl


class StoreCore:
    """The database behind the ``Store`` methods, whichever it is (``database.py``)."""

    # This broker process's node id (node/cluster.py): set on the stores of a
    # serving broker, "" for command-line tools.
    node_id = ""

    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def where(self) -> str:
        return self._database.where

    @property
    def local_folder(self) -> Path | None:
        """The folder of the SQLite file (its free space matters); None on a server."""
        path = getattr(self._database, "path", None)
        return path.parent if isinstance(path, Path) else None

    @classmethod
    def open(cls, place: StorePlace, *, read_only: bool = False) -> Self:
        """Open the database; migrate it, or (``read_only``) only check its version
        and refuse writes on this connection."""
        database: Database
        if isinstance(place, PostgresUrl):
            from allowhelp.broker.store.postgres_db import PostgresDatabase  # noqa: PLC0415

            database = PostgresDatabase.open(place, read_only=read_only)
        else:
            from allowhelp.broker.store.sqlite_db import SqliteDatabase  # noqa: PLC0415

            database = SqliteDatabase.open(Path(place), read_only=read_only)
        return cls(database)

    def close(self) -> None:
        self._database.close()

    def check_writable(self) -> None:
        """``StoreError`` when a write could not go ahead now; nothing written
        (``/healthz``, on the writer's thread)."""
        self._database.check_writable()

    def _tx(self) -> AbstractContextManager[Connection]:
        return self._database.tx()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._database.query(sql, args)
