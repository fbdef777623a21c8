"""Checking the chain the broker runs on: at start, in full after, and per replay.

At start (:meth:`ChainWatch.start`, before ``broker.started``) the broker
compares every head in its anchor file with the database (one look-up each)
and walks the chain: all of it up to :data:`SYNC_FULL_MAX` records (measured:
100,000 records in about 1.2 s), beyond that only the records after the last
anchored head that still matches (a few hundred; at most :data:`TAIL_MAX`
when no anchor is that recent). After a tail-only start the full walk runs in
a child process (``audit verify --json``: another core, the event loop is not
slowed) while the broker serves.

A break found by either is said at CRITICAL with the first bad record, chained
as an ``audit.chain_broken`` record (after the break, so the break itself is
on the record), and shown by ``GET /api/v1/audit/verify``. The broker keeps
serving: refusing would take every PC's help down over evidence it cannot
repair, and would hand whoever can write the file a way to stop the help desk.
With ``--refuse-broken-audit`` the whole chain is walked before serving and a
break stops the start instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from allowhelp.broker.audit.anchor import check_anchors, combine, read_anchors, restarted_at
from allowhelp.broker.audit.chain import (
    GENESIS_HASH,
    AuditPlace,
    VerifyResult,
    find_records,
    hash_at,
    open_ro,
    read_head,
    verify,
)
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.options import AuditOptions
from allowhelp.broker.audit.status import ChainCheck
from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable
from allowhelp.broker.model.database import STORE_ENV, PostgresUrl

log = logging.getLogger(__name__)

SYNC_FULL_MAX = 100_000  # a chain up to this long is walked in full before serving
TAIL_MAX = 100_000  # beyond: records walked at start when no anchor is recent enough
FULL_CHECK_TIMEOUT = 3600.0


def verify_anchored(
    path: AuditPlace, anchors_file: Path | None, head: tuple[int, str] | None = None
) -> tuple[VerifyResult, int, int | None]:
    """The full walk and every anchored head in ``anchors_file`` (when it exists): the
    result, how many heads were checked, and the record from which the anchor file
    vouches when it was made again or went on marked ``restarted`` (``vouched_from``)."""
    walk = verify(path, head)
    if anchors_file is None or not anchors_file.exists():
        return walk, 0, None
    heads = read_anchors(anchors_file)
    checked = check_anchors(path, heads, str(anchors_file))
    return combine(walk, checked), checked.checked, restarted_at(heads)


def startup_check(
    path: AuditPlace, anchors_file: Path | None, *, full: bool
) -> tuple[ChainCheck, int | None]:
    """The check before serving (``full`` walks from the first record whatever it
    costs), and the anchor file's ``vouched_from`` (None: it holds its history, or
    there is none)."""
    started = time.perf_counter()
    anchors, vouched_from = None, None
    if anchors_file is not None:
        try:
            heads = read_anchors(anchors_file)
            vouched_from = restarted_at(heads)
            anchors = check_anchors(path, heads, str(anchors_file))
        except FileNotFoundError:
            log.info(
                "no audit anchors in %s yet: the first is written after some records", anchors_file
            )
        except OSError as exc:
            log.error(
                "audit anchors %s unreadable (%s): checking without them",
                anchors_file,
                exc.strerror or exc,
            )
    base = (0, GENESIS_HASH)
    head = read_head(path)[0]
    if not full and head > SYNC_FULL_MAX:
        if anchors is not None:
            base = (anchors.good_seq, anchors.good_hash)
        if head - base[0] > TAIL_MAX:  # no anchor that recent: trust the tail's first link
            base = _stored(path, head - TAIL_MAX)
    walk = verify(path, start=base) if base[0] else verify(path)
    result = combine(walk, anchors)
    check = ChainCheck(
        ok=result.ok,
        scope="tail" if base[0] else "full",
        from_seq=base[0],
        last_seq=walk.last_seq,
        first_bad_seq=result.first_bad_seq,
        problem=result.problem,
        anchors_checked=anchors.checked if anchors else 0,
        seconds=round(time.perf_counter() - started, 3),
    )
    return check, vouched_from


def _vouched(anchors_file: Path, vouched_from: int) -> str:
    """The start-up line's words for an anchor file that begins ``restarted``."""
    return (
        f"vouched_from {vouched_from}: {anchors_file} was made again (or went on) at "
        f"record {vouched_from} marked restarted, its heads vouch only from there on "
        "(audit.anchors.missing, audit.anchors.begun or broker.restored says why; a "
        "syslog collector's copy holds the whole history)"
    )


def _stored(path: AuditPlace, seq: int) -> tuple[int, str]:
    conn = open_ro(path)
    try:
        return seq, hash_at(conn, seq) or GENESIS_HASH
    finally:
        conn.close()


@dataclass(frozen=True)
class DigestCheck:
    """Whether a recording's digest sits in a record the chain vouches for."""

    ok: bool
    seq: int | None
    digest: str | None
    problem: str


def check_digest_record(
    path: AuditPlace, anchors_file: Path | None, session_id: str
) -> DigestCheck:
    """The ``session.ended`` record holding a session's digest, and the chain up to
    and including it (walked now, with the anchors): verified only if both hold."""
    try:
        return _digest_record(path, anchors_file, session_id)
    except AuditCorrupt as exc:
        return DigestCheck(False, None, None, str(exc))


def _digest_record(path: AuditPlace, anchors_file: Path | None, session_id: str) -> DigestCheck:
    records = find_records(path, "session.ended", session_id, limit=2)
    if not records:
        return DigestCheck(False, None, None, "no audit record holds this recording's digest")
    if len(records) > 1:
        seqs = ", ".join(str(r.seq) for r in records)
        return DigestCheck(
            False, None, None, f"the audit log ends this session more than once (records {seqs})"
        )
    record = records[0]
    digest = record.details.get("recording_sha256")
    if not isinstance(digest, str) or not digest:
        return DigestCheck(False, record.seq, None, f"record {record.seq} holds no digest")
    walk = verify(path, upto=record.seq)
    anchors = None
    if anchors_file is not None and anchors_file.exists():
        try:
            anchors = check_anchors(path, read_anchors(anchors_file), str(anchors_file))
        except OSError as exc:
            log.warning("audit anchors %s unreadable for a replay: %s", anchors_file, exc)
    result = combine(walk, anchors)
    bad = result.first_bad_seq
    if bad is not None and bad <= record.seq:
        return DigestCheck(
            False,
            record.seq,
            digest,
            f"the audit chain is broken at record {bad}, at or before record {record.seq} "
            f"that holds this recording's digest ({result.problem}): the recording cannot "
            "be verified",
        )
    return DigestCheck(True, record.seq, digest, "")


class ChainWatch:
    """The start-up check and the full check after it, for one serving broker."""

    def __init__(self, audit: AuditLog, options: AuditOptions, data_dir: Path) -> None:
        self._audit = audit
        self._options = options
        self._data_dir = data_dir
        self._anchors = options.anchor_file(data_dir)
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ChainCheck:
        """Raises :class:`AuditCorrupt` when broken and ``--refuse-broken-audit``."""
        state = self._audit.integrity
        full = self._options.refuse_broken
        vouched_from = None
        try:
            check, vouched_from = await asyncio.to_thread(
                startup_check, self._audit.path, self._anchors, full=full
            )
        except AuditCorrupt as exc:  # unreadable rows: as broken as it gets
            check = ChainCheck(False, "full", 0, 0, None, str(exc), 0, 0.0)
        if check.ok and check.last_seq == 0:
            log.info("audit log empty at start-up: nothing to check yet")
        elif check.ok:
            log.info(
                "audit chain verified at start-up: records %d..%d (%s walk) and %d anchored "
                "head(s) in %.3f s%s",
                check.from_seq + 1,
                check.last_seq,
                check.scope,
                check.anchors_checked,
                check.seconds,
                f"; {_vouched(self._anchors, vouched_from)}" if vouched_from is not None else "",
            )
        else:
            check = await self._broken(check, "startup")
            if vouched_from is not None:
                log.warning("audit anchors at start-up: %s", _vouched(self._anchors, vouched_from))
        state.startup = check
        if not check.ok and full:
            raise AuditCorrupt(
                f"refusing to start (--refuse-broken-audit): the audit chain is broken at "
                f"record {check.first_bad_seq}: {check.problem}"
            )
        if check.scope == "tail":
            state.full_state = "running"
            self._task = asyncio.create_task(self._full_check())
        return check

    async def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _broken(self, check: ChainCheck, found_by: str) -> ChainCheck:
        log.critical(
            "AUDIT CHAIN BROKEN at record %s: %s. %s (see docs/audit.md)",
            check.first_bad_seq,
            check.problem,
            "Refusing to start"
            if self._options.refuse_broken
            else "The broker keeps serving and records the break; --refuse-broken-audit refuses",
        )
        details: dict[str, object] = {
            "first_bad_seq": check.first_bad_seq,
            "problem": check.problem,
            "found_by": found_by,
            "scope": check.scope,
            "walked_from": check.from_seq,
            "anchors_checked": check.anchors_checked,
        }
        try:
            record = await self._audit.write("audit.chain_broken", actor="system", details=details)
        except AuditUnavailable as exc:
            log.error("the broken chain could not be recorded: %s", exc)
            return check
        return replace(check, record_seq=record.seq)

    async def _full_check(self) -> None:
        state = self._audit.integrity
        command = [sys.executable, "-m", "allowhelp.broker.cli.audit", "audit", "verify"]
        place, env = self._audit.path, None
        if isinstance(place, PostgresUrl):  # in the environment: ps shows a command line
            env = {**os.environ, STORE_ENV: place.url}
        else:
            command += ["--data", str(place.parent)]
        command += ["--json"]
        if self._anchors.exists():
            command += ["--anchors", str(self._anchors)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            out, err = await asyncio.wait_for(self._proc.communicate(), FULL_CHECK_TIMEOUT)
            answer = json.loads(out.decode() or "null")
            if not isinstance(answer, dict):
                raise ValueError(err.decode(errors="replace").strip() or "no answer")
            check = ChainCheck(
                ok=bool(answer["ok"]),
                scope="full",
                from_seq=0,
                last_seq=int(answer["last_seq"]),
                first_bad_seq=answer["first_bad_seq"],
                problem=str(answer["problem"]),
                anchors_checked=int(answer["anchors_checked"]),
                seconds=float(answer["seconds"]),
            )
        except (OSError, ValueError, KeyError, TypeError, TimeoutError) as exc:
            state.full_state, state.full_error = "failed", str(exc) or type(exc).__name__
            log.error("the full audit chain check could not run: %s", state.full_error)
            return
        if check.ok:
            log.info(
                "audit chain verified in full: %d records in %.2f s", check.last_seq, check.seconds
            )
        else:
            startup = state.startup
            if startup is None or startup.ok or startup.first_bad_seq != check.first_bad_seq:
                check = await self._broken(check, "full check")
        state.full, state.full_state = check, "done"
