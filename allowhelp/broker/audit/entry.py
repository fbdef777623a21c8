"""The pieces of an audit write before it gets its seq: checking a record,
the queue entry of an async write, turning SQLite errors into refusals, and
chaining entries after a head (both back ends: ``log.py``, ``pg_chain.py``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from allowhelp.broker.audit.codes import EVENT_CODES
from allowhelp.broker.audit.format import AuditRecord, canonical, record_hash
from allowhelp.broker.errors import AuditUnavailable


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plain_reason(exc: sqlite3.Error, busy_timeout: float) -> str:
    """Say what an operator can act on rather than an SQLite error code."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_FULL"):
        return "the disk or the audit database is full"
    if name.startswith("SQLITE_READONLY"):
        return "the audit file is read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"the audit file stayed locked by another process for over {busy_timeout:g} s"
    if name.startswith("SQLITE_IOERR"):
        return "the disk reported an I/O error"
    if name.startswith("SQLITE_CANTOPEN"):
        return "the audit file cannot be opened"
    return str(exc) or type(exc).__name__


def unavailable(reason: str) -> AuditUnavailable:
    return AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")


@dataclass(frozen=True, slots=True)
class Entry:
    """A checked record waiting for its seq: everything but the chain fields."""

    type: str
    code: str
    actor: str
    target: str
    details: dict[str, object]


def make_entry(type: str, actor: str, target: str, details: Mapping[str, object] | None) -> Entry:
    """Check and clean a record on the caller's side, so a bad one is refused at
    once and never reaches (or fails) a batch of other callers' records."""
    code = EVENT_CODES.get(type)
    if code is None:
        raise ValueError(f"unknown audit event type {type!r}; register it in EVENT_CODES")
    # Round-trip so the hash covers exactly what verify() will read back
    # (tuples become lists, int keys become strings).
    try:
        text = canonical(dict(details or {}))
        clean: dict[str, object] = json.loads(text)
        text.encode("utf-8")  # the hash is over UTF-8: a lone surrogate is not
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise TypeError(f"audit details must be JSON with string keys: {exc}") from exc
    try:
        actor.encode("utf-8"), target.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TypeError(f"an audit actor or target must be plain text: {exc}") from exc
    return Entry(type, code, actor, target, clean)


@dataclass(frozen=True, slots=True)
class Waiter:
    """A queued :meth:`AuditLog.write`: its record and where to hand back the outcome."""

    entry: Entry
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[AuditRecord]


Outcome = AuditRecord | AuditUnavailable


def settle(outcomes: list[tuple[asyncio.Future[AuditRecord], Outcome]]) -> None:
    """Runs on the callers' loop: one call hands back a whole batch's results."""
    for future, outcome in outcomes:
        if future.done():  # the caller was cancelled; its record stands anyway
            continue
        if isinstance(outcome, AuditRecord):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)


def copy_refusal(exc: AuditUnavailable) -> AuditUnavailable:
    copy = AuditUnavailable(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy


def chain_on(
    entries: Sequence[Entry], seq: int, prev: str
) -> tuple[list[AuditRecord], list[dict[str, Any]]]:
    """``entries`` as the records after ``(seq, prev)``, and their rows to insert."""
    # One timestamp for the lot: they are committed at the same instant.
    ts = utc_now()
    records: list[AuditRecord] = []
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        fields: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "type": entry.type,
            "code": entry.code,
            "actor": entry.actor,
            "target": entry.target,
            "details": entry.details,
            "prev_hash": prev,
        }
        fields["hash"] = prev = record_hash(fields)
        records.append(AuditRecord(**fields))
        rows.append({**fields, "details_text": canonical(entry.details)})
    return records, rows
