"""Recordings kept for a while, then deleted: ``serve --recordings-keep 90d``.

A sweep at start and then every ``SWEEP_EVERY`` seconds deletes each shell
(``ID.cast``) and screen (``ID.rfb``) recording in the recordings folder whose
file was last written more than ``keep`` ago and that this process is not
still writing. Each deletion is audited (``recording.expired``) before the
file goes: a record that cannot be written stops the sweep and keeps the file.
The session's row and its end record stay; a replay of it is then 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.recording import is_open

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
RECORDING = re.compile(r"(?P<session>[A-Za-z0-9_-]{1,64})\.(?:cast|rfb)")


@dataclass(frozen=True)
class Old:
    path: Path
    session_id: str
    size: int
    modified: float

    def details(self, keep: float, now: float) -> dict[str, object]:
        written = datetime.fromtimestamp(self.modified, UTC)
        return {
            "recording": self.path.name,
            "recording_bytes": self.size,
            "last_written": written.isoformat(timespec="seconds"),
            "age_days": round((now - self.modified) / 86400, 2),
            "keep_days": round(keep / 86400, 2),
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


async def sweep(folder: Path, keep: float, audit: AuditLog) -> int:
    """Delete the recordings older than ``keep`` seconds, each audited first; how many went."""
    now = time.time()
    gone = 0
    for old in await asyncio.to_thread(old_recordings, folder, keep, now):
        await audit.write(
            "recording.expired",
            actor="system",
            target=old.session_id,
            details=old.details(keep, now),
        )
        try:
            await asyncio.to_thread(old.path.unlink)
        except FileNotFoundError:
            continue
        gone += 1
    if gone:
        log.info("retention: %d recording(s) older than %.1f days deleted", gone, keep / 86400)
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
