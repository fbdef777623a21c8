"""The audit chain's format, and reading it back without changing it.

The hash of a record is ``sha256(canonical(obj))`` where ``obj`` is the JSON
object with the keys seq, ts, type, code, actor, target, details, prev_hash and
canonical is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``; anyone can re-check an export with that.

The format (the hash, the record, the row shape) is ``format.py``; this module
holds the SQLite schema check and the read-only side: :func:`verify`, :func:`read_head` and
:func:`read_records` open the file ``mode=ro``, so checking or exporting the
evidence can never alter it, even while a broker writes. The writer is
:mod:`allowhelp.broker.audit.log`, which re-exports everything public here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from allowhelp.broker.audit.format import (
    GENESIS_HASH,
    HASHED,
    LAST_SQL,
    SCHEMA_VERSION,
    SELECT_SQL,
    AuditPlace,
    AuditRecord,
    ChainReader,
    VerifyResult,
    canonical,
    record_hash,
    row_to_record,
)
from allowhelp.broker.errors import AuditCorrupt
from allowhelp.broker.model.database import PostgresUrl

__all__ = [
    "GENESIS_HASH",
    "HASHED",
    "LAST_SQL",
    "SCHEMA_VERSION",
    "SELECT_SQL",
    "AuditPlace",
    "AuditRecord",
    "ChainReader",
    "VerifyResult",
    "canonical",
    "check_schema",
    "find_records",
    "hash_at",
    "open_ro",
    "read_head",
    "read_records",
    "record_hash",
    "row_to_record",
    "verify",
]


def check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """Return the schema version, refusing files this code cannot vouch for."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise AuditCorrupt(f"{path} is not an SQLite database, so not an audit log") from exc
        raise
    if version == 0 and not tables:
        return 0
    if version != SCHEMA_VERSION:
        raise AuditCorrupt(
            f"{path} has audit schema version {version}; this broker reads version "
            f"{SCHEMA_VERSION} (is it an allowhelp audit log?)"
        )
    if "audit" not in tables:
        raise AuditCorrupt(f"{path} has no audit table (is it an allowhelp audit log?)")
    return version


def _open_ro(place: AuditPlace) -> ChainReader:
    """Read-only: checking or exporting must never change the evidence."""
    if isinstance(place, PostgresUrl):
        from allowhelp.broker.audit.pg_reader import open_reader  # noqa: PLC0415 - psycopg

        return open_reader(place)
    path = Path(place)
    if not path.is_file():
        raise FileNotFoundError(f"no audit log at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        if check_schema(conn, path) == 0:
            raise AuditCorrupt(f"{path} is an empty database, not an audit log")
    except BaseException:
        conn.close()
        raise
    return conn


def read_head(path: AuditPlace) -> tuple[int, str]:
    """The head of a log on disk, read-only (for the CLI, while a broker runs)."""
    conn = _open_ro(path)
    try:
        row = conn.execute(LAST_SQL).fetchone()
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def read_records(path: AuditPlace, after: int = 0) -> Iterator[AuditRecord]:
    """Stream records read-only, so exporting a large log needs little memory."""
    conn = _open_ro(path)
    try:
        for row in _rows(conn, after):
            yield row_to_record(row)
    finally:
        conn.close()


def _rows(conn: ChainReader, after: int, upto: int | None = None) -> Iterator[tuple[Any, ...]]:
    """The rows after seq ``after`` (up to ``upto``) in seq order, streamed: SQLite
    steps through one statement; PostgreSQL's reader reads pages (``pg_reader.py``)."""
    if not isinstance(conn, sqlite3.Connection):
        from allowhelp.broker.audit.pg_reader import PgReader  # noqa: PLC0415 - psycopg

        if isinstance(conn, PgReader):
            return conn.rows(after, upto)
    if upto is None:
        return iter(conn.execute(f"{SELECT_SQL} WHERE seq > ? ORDER BY seq", (after,)))
    sql = f"{SELECT_SQL} WHERE seq > ? AND seq <= ? ORDER BY seq"
    return iter(conn.execute(sql, (after, upto)))


def _check_seq_key(conn: ChainReader) -> None:
    """PostgreSQL, read in pages: its table must still have its primary key on seq
    (``pg_reader.py``). SQLite's ``seq INTEGER PRIMARY KEY`` is the rowid: always unique."""
    if not isinstance(conn, sqlite3.Connection):
        from allowhelp.broker.audit.pg_reader import PgReader  # noqa: PLC0415 - psycopg

        if isinstance(conn, PgReader):
            conn.check_seq_key()


def _check_row(row: tuple[Any, ...], expected: int, prev: str) -> str:
    """The first thing wrong with one row, in words, or ''."""
    seq: int = row[0]  # INTEGER PRIMARY KEY: always an int
    if seq != expected:
        return f"record {expected} is missing (sequence jumps from {expected - 1} to {seq})"
    if not all(isinstance(field, str) for field in row[1:]):
        return f"record {seq} was edited (a field has the wrong type)"
    named: dict[str, Any] = dict(zip((*HASHED, "hash"), row, strict=True))
    text = named["details"]
    try:
        named["details"] = json.loads(text)
    except ValueError:
        return f"record {seq} was edited (details are not valid JSON)"
    if record_hash(named) != named["hash"]:
        return f"record {seq} was edited (hash mismatch)"
    return _unlike_written(seq, named["details"], text) or _unlinked(seq, named, prev)


def _unlike_written(seq: int, details: object, text: str) -> str:
    """A row whose hash holds, but whose details are not spelt as the log writes them:
    a key written twice (JSON keeps the last, which is what was hashed, while a reader
    of the table sees the first)."""
    if canonical(details) != text:
        return f"record {seq} was edited (details are not as the log writes them)"
    return ""


def _unlinked(seq: int, named: dict[str, Any], prev: str) -> str:
    if named["prev_hash"] != prev:
        return f"record {seq} is out of order / its prev_hash does not match record {seq - 1}"
    return ""


def verify(
    path: AuditPlace,
    head: tuple[int, str] | None = None,
    *,
    start: tuple[int, str] | None = None,
    upto: int | None = None,
) -> VerifyResult:
    """Walk the chain read-only and report the first bad record.

    ``head`` is a ``(seq, hash)`` saved earlier outside this file; without it,
    records cut off the end cannot be noticed. ``start`` is a ``(seq, hash)``
    already vouched for (an anchor): the walk begins after it, and the record
    after it must link to that hash. ``upto`` ends the walk after that seq (it
    must exist). ``count`` is then the number of records walked.
    """
    conn = _open_ro(path)
    base, prev = start if start is not None else (0, GENESIS_HASH)
    try:
        _check_seq_key(conn)
        stray = conn.execute("SELECT seq FROM audit WHERE seq < 1 LIMIT 1").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise AuditCorrupt(f"{path} cannot be read: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    if stray is not None or (upto is not None and upto < 1):  # a row no walk would meet
        conn.close()
        bad = int(stray[0]) if stray is not None else int(upto or 0)
        problem = f"a record numbered {bad} was added outside the chain (records start at 1)"
        return VerifyResult(False, 0, base, bad, problem, prev)
    seq = base
    head_hash = prev if head is not None and head[0] == base else None
    try:
        for row in _rows(conn, base, upto):
            problem = _check_row(row, seq + 1, prev)
            if problem:
                return VerifyResult(False, seq - base, seq, seq + 1, problem, prev)
            seq, prev = seq + 1, str(row[8])
            if head is not None and seq == head[0]:
                head_hash = prev
    except sqlite3.DatabaseError as exc:
        raise AuditCorrupt(f"{path} cannot be read: {exc}") from exc
    finally:
        conn.close()
    if upto is not None and seq < upto:
        problem = f"record {seq + 1} is missing (the log ends at {seq})"
        return VerifyResult(False, seq - base, seq, seq + 1, problem, prev)
    if head is not None and head_hash is None:
        problem = f"the log was truncated: head {head[0]} not present"
        return VerifyResult(False, seq - base, seq, seq + 1, problem, prev)
    if head is not None and head_hash != head[1]:
        problem = f"record {head[0]}'s hash differs from the saved head"
        return VerifyResult(False, seq - base, seq, head[0], problem, prev)
    return VerifyResult(True, seq - base, seq, None, "", prev)


def hash_at(conn: ChainReader, seq: int) -> str | None:
    """The stored hash of record ``seq``, or None when there is no such record."""
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else str(row[0])


def open_ro(path: AuditPlace) -> ChainReader:
    """A read-only connection on an audit file (schema checked); the caller closes it."""
    return _open_ro(path)


def find_records(path: AuditPlace, type: str, target: str, limit: int = 2) -> list[AuditRecord]:
    """The oldest records of ``type`` about ``target``, read-only (a table scan:
    for rare look-ups such as a replay's digest record)."""
    conn = _open_ro(path)
    try:
        rows = conn.execute(
            f"{SELECT_SQL} WHERE seq > 0 AND type = ? AND target = ? ORDER BY seq LIMIT ?",
            (type, target, limit),
        ).fetchall()
        return [row_to_record(row) for row in rows]
    except (sqlite3.DatabaseError, ValueError) as exc:
        raise AuditCorrupt(f"{path} cannot be read: {exc}") from exc
    finally:
        conn.close()
