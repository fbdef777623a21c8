"""Recordings kept for a while, then deleted: ``serve --recordings-keep 90d``.

A sweep at start and then every ``SWEEP_EVERY`` seconds deletes a shell
(``ID.cast``) or screen (``ID.rfb``) recording in the recordings folder only
when the audit chain holds its session's end record (``session.ended``, target
``ID``) and ``keep`` has passed since that record was written and since the
file was last written, and this process is not still writing it. The chain is
what every node sharing the folder shares (PostgreSQL), so a session still
running on another node, one whose end is being written, or one whose end is
owed after a crash or a lost database (written later, at the next start or by
the node that takes over) keeps its recording however short the keep. A
recording whose session never gets an end record is never deleted; each sweep
says how many it kept so.

The files past the keep are found by their time first; their end records are
then read in one pass over the chain per ``LOOKUP`` of them (read-only, in a
thread), so a sweep with nothing old reads nothing. Each deletion is audited
(``recording.expired``, with the end record's seq) before the file goes: a
record that cannot be written stops the sweep and keeps the file, and so does a
chain that cannot be read. The session's row and its end record stay; a replay
of it is then 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from allowhelp.broker.audit.chain import open_ro
from allowhelp.broker.audit.format import AuditPlace
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.recording import is_open
from allowhelp.broker.errors import AuditCorrupt

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
LOOKUP = 500  # sessions whose end records one query looks for
_ENDS_SQL = "SELECT target, seq, ts FROM audit WHERE type = 'session.ended'"
RECORDING = re.compile(r"(?P<session>[A-Za-z0-9_-]{1,64})\.(?:cast|rfb)")


@dataclass(frozen=True)
class End:
    """A session's end record: its seq, its time as written, and as seconds."""

    seq: int
    ts: str
    at: float


@dataclass(frozen=True)
class Old:
    path: Path
    session_id: str
    size: int
    modified: float

    def details(self, keep: float, now: float, end: End) -> dict[str, object]:
        written = datetime.fromtimestamp(self.modified, UTC)
        return {
            "recording": self.path.name,
            "recording_bytes": self.size,
            "last_written": written.isoformat(timespec="seconds"),
            "age_days": round((now - self.modified) / 86400, 2),
            "keep_days": round(keep / 86400, 2),
            "session_ended": end.ts,
            "ended_seq": end.seq,
        }


def old_recordings(folder: Path, keep: float, now: float) -> list[Old]:
    """The recordings in ``folder`` last written before ``now - keep``, oldest first."""
    found: list[Old] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = RECORDING.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or is_open(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # gone meanwhile (a restore, an admin)
            continue
        if st.st_mtime < now - keep:
            found.append(Old(Path(entry.path), match["session"], st.st_size, st.st_mtime))
    return sorted(found, key=lambda old: old.modified)


def session_ends(place: AuditPlace, session_ids: Sequence[str]) -> dict[str, End]:
    """The end record (``session.ended``) of each of ``session_ids`` that has one,
    read-only; the latest if there were more. One pass per ``LOOKUP`` sessions."""
    ends: dict[str, End] = {}
    if not session_ids:
        return ends
    conn = open_ro(place)
    try:
        for first in range(0, len(session_ids), LOOKUP):
            chunk = tuple(session_ids[first : first + LOOKUP])
            marks = ", ".join("?" * len(chunk))
            sql = f"{_ENDS_SQL} AND target IN ({marks}) ORDER BY seq"  # ? marks only
            rows = conn.execute(sql, chunk).fetchall()
            for target, seq, ts in rows:
                ends[str(target)] = End(int(seq), str(ts), _seconds(str(ts)))
    except sqlite3.DatabaseError as exc:
        raise AuditCorrupt(f"{place} cannot be read: {exc}") from exc
    finally:
        conn.close()
    return ends


def _seconds(ts: str) -> float:
    """A record's time as seconds; one that does not parse counts as not yet."""
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        log.warning("retention: an end record's time %r does not parse: its recording stays", ts)
        return float("inf")


async def sweep(folder: Path, keep: float, audit: AuditLog, now: float | None = None) -> int:
    """Delete the recordings whose session ended more than ``keep`` seconds before
    ``now`` (and that were last written before then too), each audited first;
    how many went."""
    now = time.time() if now is None else now
    old = await asyncio.to_thread(old_recordings, folder, keep, now)
    ends = await asyncio.to_thread(session_ends, audit.path, sorted({o.session_id for o in old}))
    unended = sum(1 for o in old if o.session_id not in ends)
    if unended:
        log.info(
            "retention: %d recording(s) older than %.2f days kept: their session has no end "
            "record yet (running, maybe on another node, or its end is still owed)",
            unended,
            keep / 86400,
        )
    gone = 0
    for recording in old:
        end = ends.get(recording.session_id)
        if end is None or end.at >= now - keep:
            continue
        await audit.write(
            "recording.expired",
            actor="system",
            target=recording.session_id,
            details=recording.details(keep, now, end),
        )
        try:
            await asyncio.to_thread(recording.path.unlink)
        except FileNotFoundError:
            continue
        gone += 1
    if gone:
        log.info(
            "retention: %d recording(s) of sessions ended over %.2f days ago deleted",
            gone,
            keep / 86400,
        )
    return gone


async def keep_sweeping(folder: Path, keep: float, audit: AuditLog) -> None:
    """Sweep now and every ``SWEEP_EVERY`` seconds until cancelled; a failed
    sweep (the audit log refusing, a disk error) is logged and tried again."""
    while True:
        try:
            await sweep(folder, keep, audit)
        except Exception as exc:  # the next sweep tries again; the files stay meanwhile
            log.error("retention sweep of %s failed: %s", folder, exc)
        await asyncio.sleep(SWEEP_EVERY)


def start_retention(folder: Path, keep: float | None, audit: AuditLog) -> asyncio.Task[None] | None:
    return None if keep is None else asyncio.create_task(keep_sweeping(folder, keep, audit))


async def stop_retention(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
