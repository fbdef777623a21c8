"""What the store and the audit log share about their database, whichever it is.

``--store`` is either absent (SQLite files in the data folder, the default) or a
PostgreSQL URL shared by several broker nodes (docs/multinode.md). This module
holds the URL's one parsed form and the shape of a row both back ends return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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
        except ValueError:  # its text may quote the password (NFKC's netloc check)
            raise ValueError(
                "--store: not a URL (a port that is no number, or a character a URL's"
                " host part cannot hold: percent-encode it)"
            ) from None
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
        return _mask_secrets(self._shown())

    def _shown(self) -> str:
        bare, password = self.without_password()
        if password is None:
            return self.url
        parts = urlsplit(bare)
        if urlsplit(self.url).password is not None:  # where it was, it shows as ***
            user, at, host = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=f"{user}:***{at}{host}")
        else:
            query = "&".join(filter(None, [parts.query, "password=***"]))
            parts = parts._replace(query=query)
        return _join(parts)

    def without_password(self) -> tuple[str, str | None]:
        """The URL with no password in it, and the password (from ``user:password@``
        or a ``password=`` parameter), for clients that take it apart (PGPASSWORD)."""
        parts = urlsplit(self.url)
        password = None if parts.password is None else unquote(parts.password)
        user, at, host = parts.netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}{at}{host}"
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "password":
                password = value
            else:
                kept.append((name, value))
        if password is None:
            return self.url, None
        return _join(parts._replace(netloc=netloc, query=urlencode(kept))), password


SECRET_PARAMETERS = frozenset({"sslpassword"})  # libpq's other secret (the client key's)


def _mask_secrets(url: str) -> str:
    """``url`` with the values of ``SECRET_PARAMETERS`` shown as ***."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    shown = [
        f"{item.partition('=')[0]}=***"
        if unquote(item.partition("=")[0]) in SECRET_PARAMETERS
        else item
        for item in parts.query.split("&")
    ]
    return _join(parts._replace(query="&".join(shown)))


def _join(parts: SplitResult) -> str:
    """``urlunsplit`` that keeps ``//`` before an empty host (``postgresql:///db``)."""
    url = urlunsplit(parts)
    if not parts.netloc:
        url = url.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)
    return url


def parse_store(text: str | None) -> PostgresUrl | None:
    """``--store``: None (SQLite in the data folder) or a checked PostgreSQL URL."""
    if text is None or not text.strip():
        return None
    return PostgresUrl.parse(text)
