"""The audit chain's record format, without I/O: the hash, the record, the row shape.

The hash of a record is ``sha256(canonical(obj))`` where ``obj`` is the JSON
object with the keys seq, ts, type, code, actor, target, details, prev_hash and
canonical is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``; anyone can re-check an export with that.
Both back ends (SQLite: ``log.py``, ``chain.py``; PostgreSQL: ``pg_reader.py``,
``pg_chain.py``) build on this module and nothing else of the chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from allowhelp.broker.model.database import PostgresUrl

GENESIS_HASH = "0" * 64
SCHEMA_VERSION = 1

HASHED = ("seq", "ts", "type", "code", "actor", "target", "details", "prev_hash")
SELECT_SQL = "SELECT seq, ts, type, code, actor, target, details, prev_hash, hash FROM audit"
LAST_SQL = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"

# Where a chain lives: an SQLite file, or the shared PostgreSQL database (pg_chain.py).
AuditPlace = Path | PostgresUrl


class ChainReader(Protocol):
    """A read-only connection on a chain: ``?`` statements, rows as tuples."""

    def execute(self, sql: str, args: tuple[Any, ...] = (), /) -> Any: ...

    def close(self) -> None: ...


def canonical(obj: object) -> str:
    """The one JSON spelling that hashes are computed over."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(fields: Mapping[str, object]) -> str:
    """The chain hash of a record's fields (every column but ``hash``).

    Public so that an export can be re-checked without this database.
    """
    payload = {key: fields[key] for key in HASHED}
    return hashlib.sha256(canonical(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    type: str
    code: str
    actor: str
    target: str
    details: Mapping[str, object]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    """``count``, ``last_seq`` and ``last_hash`` cover the records found good,
    i.e. all of them when ``ok``, else those before the first problem."""

    ok: bool
    count: int
    last_seq: int
    first_bad_seq: int | None
    problem: str
    last_hash: str = GENESIS_HASH


def row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    named = dict(zip((*HASHED, "hash"), row, strict=True))
    return AuditRecord(**{**named, "details": json.loads(named["details"])})
