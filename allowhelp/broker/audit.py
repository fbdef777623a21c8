"""The audit log: every security-relevant broker action, in a hash chain.

The help desk must be able to show, months later, who looked at which PC, when
and with whose permission, and prove that nobody edited the record since. So:

* this module is the only writer, and a record is committed (fsynced, WAL with
  ``synchronous=FULL``) before :meth:`AuditLog.append` returns; a caller that
  gets :class:`AuditUnavailable` must refuse the action (fail closed);
* each record carries the SHA-256 of its own canonical JSON and the hash of the
  record before it, so an edit, a deletion or a reordering breaks the chain
  where it happened; cutting records off the end is caught by comparing with a
  head (``SEQ:HASH``) saved elsewhere, e.g. by the syslog collector;
* triggers refuse UPDATE and DELETE, so a bug cannot rewrite history by accident.

The hash of a record is ``sha256(canonical(obj))`` where ``obj`` is the JSON
object with the keys seq, ts, type, code, actor, target, details, prev_hash and
canonical is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``; anyone can re-check an export with that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable

if TYPE_CHECKING:
    from allowhelp.broker.syslog import SyslogForwarder

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
SCHEMA_VERSION = 1

# Stable codes for each event type. They appear in exports and in syslog
# (MSGID), and collectors' alert rules match on them: a code, once assigned,
# never changes and is never reused. Add new types with new codes only.
EVENT_CODES: dict[str, str] = {
    # authentication (AH10xx)
    "auth.login.ok": "AH1001",
    "auth.login.failed": "AH1002",
    "auth.login.throttled": "AH1003",
    "auth.logout": "AH1004",
    "auth.totp.enrolled": "AH1005",
    "auth.totp.reset": "AH1006",
    # user accounts (AH11xx)
    "user.created": "AH1101",
    "user.updated": "AH1102",
    "user.disabled": "AH1103",
    "user.role_changed": "AH1104",
    # enrolment tokens (AH12xx)
    "token.created": "AH1201",
    "token.used": "AH1202",
    "token.refused": "AH1203",
    # agents (AH13xx)
    "agent.enrolled": "AH1301",
    "agent.connected": "AH1302",
    "agent.disconnected": "AH1303",
    "agent.refused": "AH1304",
    "agent.removed": "AH1305",
    # sessions and consent (AH14xx)
    "session.requested": "AH1401",
    "consent.asked": "AH1402",
    "consent.granted": "AH1403",
    "consent.denied": "AH1404",
    "consent.expired": "AH1405",
    "session.started": "AH1406",
    "session.ended": "AH1407",
    "session.failed": "AH1408",
    "help.requested": "AH1409",
    # the broker itself (AH19xx)
    "broker.started": "AH1901",
    "broker.stopped": "AH1902",
    "request.refused": "AH1903",
    # console administration (appended: codes above never change)
    "auth.policy.changed": "AH1007",
    "token.revoked": "AH1204",
    "session.replayed": "AH1410",
}

_HASHED = ("seq", "ts", "type", "code", "actor", "target", "details", "prev_hash")
_SELECT = "SELECT seq, ts, type, code, actor, target, details, prev_hash, hash FROM audit"
_LAST = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
_INSERT = (
    "INSERT INTO audit (seq, ts, type, code, actor, target, details, prev_hash, hash)"
    " VALUES (:seq, :ts, :type, :code, :actor, :target, :details_text, :prev_hash, :hash)"
)
_SCHEMA = (
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL,"
    " code TEXT NOT NULL, actor TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


def _canonical(obj: object) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(fields: Mapping[str, object]) -> str:
    """The chain hash of a record's fields (every column but ``hash``).

    Public so that an export can be re-checked without this database.
    """
    payload = {key: fields[key] for key in _HASHED}
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


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


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain_reason(exc: sqlite3.Error, busy_timeout: float) -> str:
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


def _unavailable(reason: str) -> AuditUnavailable:
    return AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")


def _check_schema(conn: sqlite3.Connection, path: Path) -> int:
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


def _open_ro(path: Path) -> sqlite3.Connection:
    """Read-only: checking or exporting must never change the evidence."""
    if not path.is_file():
        raise FileNotFoundError(f"no audit log at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        if _check_schema(conn, path) == 0:
            raise AuditCorrupt(f"{path} is an empty database, not an audit log")
    except BaseException:
        conn.close()
        raise
    return conn


def _row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    named = dict(zip((*_HASHED, "hash"), row, strict=True))
    return AuditRecord(**{**named, "details": json.loads(named["details"])})


class AuditLog:
    """The one writer of the audit file; safe to share between threads and tasks."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        forwarder: SyslogForwarder | None,
        busy_timeout: float,
    ) -> None:
        self._conn = conn
        self._path = path
        self._forwarder = forwarder
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._closed = False
        # One thread, so async writers queue up instead of fighting over the lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        forwarder: SyslogForwarder | None = None,
        busy_timeout: float = 2.0,
        _read_only: bool = False,
    ) -> AuditLog:
        """Open or create the log.

        ``_read_only`` is for tests only: it opens the file exactly as SQLite
        opens one the process may not write (it falls back to read-only), which
        root cannot otherwise reproduce with chmod.
        """
        path = Path(path)
        target = f"{path.resolve().as_uri()}?mode=ro" if _read_only else str(path)
        conn: sqlite3.Connection | None = None
        try:
            if not _read_only:
                # Details may hold users' words: owner-only. SQLite gives the
                # -wal and -shm files the same mode as the database.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(
                target,
                uri=_read_only,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            if _check_schema(conn, path) == 0:
                conn.execute("BEGIN IMMEDIATE")
                # Another process may have created it while we waited for the lock.
                # (executescript would COMMIT first, so one statement at a time.)
                if _check_schema(conn, path) == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                conn.execute("COMMIT")
            if not _read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except AuditCorrupt:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise _unavailable(_plain_reason(exc, busy_timeout)) from exc
        except OSError as exc:
            raise _unavailable(f"the audit file cannot be created ({exc.strerror or exc})") from exc
        return cls(conn, path, forwarder, busy_timeout)

    def append(
        self,
        type: str,
        *,
        actor: str,
        target: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """Commit one record; only after this returns may the action take effect."""
        code = EVENT_CODES.get(type)
        if code is None:
            raise ValueError(f"unknown audit event type {type!r}; register it in EVENT_CODES")
        # Round-trip so the hash covers exactly what verify() will read back
        # (tuples become lists, int keys become strings).
        try:
            clean: dict[str, object] = json.loads(_canonical(dict(details or {})))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"audit details must be JSON with string keys: {exc}") from exc
        with self._lock:
            if self._closed:
                raise _unavailable("the audit log is closed")
            record = self._commit(type, code, actor, target, clean)
            log.debug("audit record %d %s committed", record.seq, record.type)
            # Under the lock so the collector sees seq order; submit never blocks.
            if self._forwarder is not None:
                try:
                    self._forwarder.submit(record)
                except Exception:  # committed already; forwarding is best effort
                    log.warning("syslog forwarding of record %d failed", record.seq, exc_info=True)
        return record

    def _commit(
        self, type: str, code: str, actor: str, target: str, details: dict[str, object]
    ) -> AuditRecord:
        conn = self._conn
        try:
            # IMMEDIATE takes the write lock before reading the last row, so two
            # processes on one file cannot both claim the same seq.
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute(_LAST).fetchone()
            seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS_HASH)
            fields: dict[str, Any] = {
                "seq": seq,
                "ts": _utc_now(),
                "type": type,
                "code": code,
                "actor": actor,
                "target": target,
                "details": details,
                "prev_hash": prev,
            }
            fields["hash"] = record_hash(fields)
            conn.execute(_INSERT, {**fields, "details_text": _canonical(details)})
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            reason = _plain_reason(exc, self._busy_timeout)
            log.warning("audit append of %s refused: %s", type, reason)
            raise _unavailable(reason) from exc
        return AuditRecord(**fields)

    def _rollback(self) -> None:
        """Leave no half transaction behind, so the next append starts clean."""
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("audit rollback failed", exc_info=True)

    async def write(
        self,
        type: str,
        *,
        actor: str,
        target: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """:meth:`append` without blocking the event loop on fsync."""
        call = functools.partial(self.append, type, actor=actor, target=target, details=details)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RuntimeError as exc:  # the executor is shut down: close() was called
            raise _unavailable("the audit log is closed") from exc
        return await future

    def head(self) -> tuple[int, str]:
        with self._lock:
            try:
                row = self._conn.execute(_LAST).fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(_plain_reason(exc, self._busy_timeout)) from exc
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def records(self, after: int = 0, limit: int | None = None) -> list[AuditRecord]:
        sql = f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?"
        with self._lock:
            try:
                rows = self._conn.execute(sql, (after, -1 if limit is None else limit)).fetchall()
            except sqlite3.Error as exc:
                raise _unavailable(_plain_reason(exc, self._busy_timeout)) from exc
        return [_row_to_record(row) for row in rows]

    def close(self) -> None:
        """Wait for queued writes, then close. The forwarder stays the caller's."""
        self._executor.shutdown(wait=True)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def read_head(path: Path) -> tuple[int, str]:
    """The head of a log on disk, read-only (for the CLI, while a broker runs)."""
    conn = _open_ro(Path(path))
    try:
        row = conn.execute(_LAST).fetchone()
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def read_records(path: Path, after: int = 0) -> Iterator[AuditRecord]:
    """Stream records read-only, so exporting a large log needs little memory."""
    conn = _open_ro(Path(path))
    try:
        for row in conn.execute(f"{_SELECT} WHERE seq > ? ORDER BY seq", (after,)):
            yield _row_to_record(row)
    finally:
        conn.close()


def _check_row(row: tuple[Any, ...], expected: int, prev: str) -> str:
    """The first thing wrong with one row, in words, or ''."""
    seq: int = row[0]  # INTEGER PRIMARY KEY: always an int
    if seq != expected:
        return f"record {expected} is missing (sequence jumps from {expected - 1} to {seq})"
    if not all(isinstance(field, str) for field in row[1:]):
        return f"record {seq} was edited (a field has the wrong type)"
    named: dict[str, Any] = dict(zip((*_HASHED, "hash"), row, strict=True))
    try:
        named["details"] = json.loads(named["details"])
    except ValueError:
        return f"record {seq} was edited (details are not valid JSON)"
    if record_hash(named) != named["hash"]:
        return f"record {seq} was edited (hash mismatch)"
    if named["prev_hash"] != prev:
        return f"record {seq} is out of order / its prev_hash does not match record {seq - 1}"
    return ""


def verify(path: Path, head: tuple[int, str] | None = None) -> VerifyResult:
    """Walk the whole chain read-only and report the first bad record.

    ``head`` is a ``(seq, hash)`` saved earlier outside this file; without it,
    records cut off the end cannot be noticed.
    """
    path = Path(path)
    conn = _open_ro(path)
    count, prev = 0, GENESIS_HASH
    head_hash = GENESIS_HASH if head is not None and head[0] == 0 else None
    try:
        for row in conn.execute(f"{_SELECT} ORDER BY seq"):
            problem = _check_row(row, count + 1, prev)
            if problem:
                return VerifyResult(False, count, count, count + 1, problem, prev)
            count, prev = count + 1, str(row[8])
            if head is not None and count == head[0]:
                head_hash = prev
    except sqlite3.DatabaseError as exc:
        raise AuditCorrupt(f"{path} cannot be read: {exc}") from exc
    finally:
        conn.close()
    if head is not None and head_hash is None:
        problem = f"the log was truncated: head {head[0]} not present"
        return VerifyResult(False, count, count, count + 1, problem, prev)
    if head is not None and head_hash != head[1]:
        problem = f"record {head[0]}'s hash differs from the saved head"
        return VerifyResult(False, count, count, head[0], problem, prev)
    return VerifyResult(True, count, count, None, "", prev)
