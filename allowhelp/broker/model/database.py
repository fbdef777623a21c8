"""What the store and the audit log share about their database, whichever it is.

``--store`` is either absent (SQLite files in the data folder, the default) or a
PostgreSQL URL shared by several broker nodes (docs/multinode.md). This module
holds the URL's one parsed form and the shape of a row both back ends return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
# --store may come from here instead of the command line, where ps would show its password.
STORE_ENV = "ALLOWHELP_STORE"


class Row(Protocol):
    """A result row: by position (``row[0]``) or by column name (``row["id"]``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


@dataclass(frozen=True)
class PostgresUrl:
    """A ``postgresql://`` URL, checked once; ``str()`` hides the password."""

    url: str

    @classmethod
    def parse(cls, text: str) -> PostgresUrl:
        try:
            parts = urlsplit(text.strip())
            port = parts.port  # raises ValueError when it is not a number
        except ValueError as exc:
            raise ValueError(f"--store: not a URL ({exc})") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                "--store must be a postgresql://user:password@host:port/database URL "
                f"(got scheme {parts.scheme or 'none'!r})"
            )
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ValueError("--store: the URL names no database (postgresql://.../DATABASE)")
        if port == 0:
            raise ValueError("--store: port 0 is not a database port")
        return cls(text.strip())

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


def parse_store(text: str | None) -> PostgresUrl | None:
    """``--store``: None (SQLite in the data folder) or a checked PostgreSQL URL."""
    if text is None or not text.strip():
        return None
    return PostgresUrl.parse(text)
