"""``allowhelp-broker backup``: a consistent snapshot of a data folder, taken while
the broker runs.

Order matters, because the broker writes its store *behind* the audit log
(docs/design.md §3.2): every row the store holds had its audit record
committed first. So the snapshot is taken in this order:

1. a ``broker.backup`` audit record (audit before action; if the log takes no
   records, no backup is taken);
2. the anchor file (only heads already committed are in it);
3. ``broker.sqlite3`` by SQLite's online backup API;
4. ``audit.sqlite3`` likewise, so every row of the store snapshot has its
   record in the chain snapshot: the pair looks like a broker stopped at that
   instant, which the next start already knows how to finish (sessions still
   open end as ``broker_restart``);
5. the keys, ``broker.json``, and the recordings. A recording is on disk before
   its session's end record, so every recording whose digest is in the
   snapshot is complete; one still being written is taken as it is, and the
   restored broker cuts a torn last line and hashes it into the session's
   ``broker_restart`` end record.

The file is written to ``FILE.partial`` (mode 0600: it holds the private keys)
and renamed into place only once complete; on any failure nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from allowhelp import __version__
from allowhelp.broker.audit.anchor import ANCHOR_FILE
from allowhelp.broker.audit.chain import SCHEMA_VERSION, AuditPlace, check_schema, read_head
from allowhelp.broker.audit.entry import utc_now
from allowhelp.broker.audit.opening import open_for_cli
from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable, BackupError, StoreError
from allowhelp.broker.node.archive import (
    REQUIRED,
    FileEntry,
    Manifest,
    fsync_dir,
    os_reason,
)
from allowhelp.broker.node.backup_members import add_path, anchor_lines, finish_archive
from allowhelp.broker.node.datafolder import AUDIT_FILE, STORE_FILE
from allowhelp.broker.settings import RECORDINGS
from allowhelp.broker.store import Store
from allowhelp.broker.store.migrations import MIGRATIONS

BUSY_TIMEOUT = 10.0  # seconds a snapshot waits for a writer's lock


@dataclass(frozen=True)
class BackupResult:
    output: Path
    size: int
    manifest: Manifest
    warnings: tuple[str, ...] = field(default=())

    @property
    def recordings(self) -> int:
        return sum(1 for entry in self.manifest.files if entry.path.startswith(f"{RECORDINGS}/"))


def take_backup(data_dir: Path, output: Path, *, recordings: Path | None = None) -> BackupResult:
    """Write a backup of ``data_dir`` (and its recordings) to ``output``."""
    data_dir = check_data_folder(data_dir)
    recordings_dir = _recordings_folder(data_dir, recordings)
    output = output.expanduser().absolute()
    mode = _tar_mode(output)
    _check_output(output)
    details: dict[str, object] = {"data": str(data_dir), "recordings": str(recordings_dir)}
    audit_backup(data_dir / AUDIT_FILE, data_dir, output, details)
    return write_backup_file(
        output,
        lambda handle: _write_archive(handle, mode, data_dir, recordings_dir, output.parent),
    )


def write_backup_file(output: Path, write: Callable[[IO[bytes]], Manifest]) -> BackupResult:
    """``write`` the archive into ``FILE.partial`` (0600), then rename it into place;
    on any failure nothing is left."""
    partial = output.with_name(output.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise BackupError(
            f"{partial} already exists (another backup to {output.name} is running, or one "
            "was killed): remove it and try again"
        ) from None
    except OSError as exc:
        raise BackupError(f"no backup written: {os_reason(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            manifest = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, output)
        fsync_dir(output.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(exc, OSError):
            raise BackupError(f"no backup written to {output}: {os_reason(exc)}") from exc
        raise
    size = output.stat().st_size
    return BackupResult(output, size, manifest, tuple(exposure_warnings(output)))


def check_data_folder(data_dir: Path) -> Path:
    """The folder, if it holds a broker's keys and databases; else a message saying so."""
    data_dir = data_dir.expanduser().absolute()
    if not data_dir.is_dir():
        raise BackupError(f"no broker data folder at {data_dir}: give --data the folder serve uses")
    missing = [name for name in REQUIRED if not (data_dir / name).is_file()]
    if missing:
        raise BackupError(
            f"{data_dir} is not a broker's data folder (no {', '.join(missing)}): give --data "
            "the folder serve uses"
        )
    _check_store(data_dir / STORE_FILE)
    _check_audit(data_dir / AUDIT_FILE)
    return data_dir


def exposure_warnings(output: Path) -> Iterator[str]:
    """What makes the backup's private keys readable by others, if anything."""
    mode = output.stat().st_mode
    if mode & 0o077:
        yield (
            f"{output} is readable by others (mode {stat.S_IMODE(mode):04o}, the filesystem "
            "ignores 0600): it holds the broker's private keys, move it somewhere private"
        )
    folder = output.parent.stat().st_mode
    if folder & (stat.S_IROTH | stat.S_IWOTH):
        yield (
            f"{output.parent} is open to other users (mode {stat.S_IMODE(folder):04o}): the "
            "backup holds the broker's private keys, keep it in a folder only you can read"
        )


def _recordings_folder(data_dir: Path, given: Path | None) -> Path:
    if given is None:
        return data_dir / RECORDINGS
    folder = given.expanduser().absolute()
    if not folder.is_dir():
        raise BackupError(f"--recordings {folder} is not a folder: give the one serve uses")
    return folder


def _tar_mode(output: Path) -> str:
    return "w:gz" if output.name.endswith((".gz", ".tgz")) else "w:"


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise BackupError(
            f"the folder {output.parent} does not exist: create it or give --output another folder"
        )
    if output.is_dir():
        raise BackupError(f"--output {output} is a folder: give a file name, e.g. broker.tar.gz")


def _check_store(path: Path) -> None:
    """A store this allowhelp reads (its own schema version), else not a broker's folder."""
    try:
        Store.open(path, read_only=True).close()
    except StoreError as exc:
        raise BackupError(f"{path} is not a broker database this allowhelp reads ({exc})") from exc


def _check_audit(path: Path) -> None:
    try:
        conn = _open_ro(path)
        try:
            version = check_schema(conn, path)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not an audit log ({exc})") from exc
    except AuditCorrupt as exc:
        raise BackupError(str(exc)) from exc
    if version != SCHEMA_VERSION:
        raise BackupError(f"{path} is not an audit log (empty)")


def audit_backup(
    place: AuditPlace, data_dir: Path, output: Path, details: dict[str, object]
) -> None:
    """``broker.backup`` goes into the chain before the snapshot, so the backup holds it;
    through the sinks ``serve`` remembered in ``data_dir`` (syslog, anchors), as every
    command's record (SQLite or PostgreSQL alike)."""
    try:
        opened = open_for_cli(place, data_dir)
        try:
            opened.audit.append(
                "broker.backup", actor="system:cli", target=str(output), details=details
            )
        finally:
            opened.close()
    except (AuditUnavailable, AuditCorrupt) as exc:
        raise BackupError(f"no backup taken: {exc}") from exc


def _write_archive(
    handle: IO[bytes], mode: str, data_dir: Path, recordings_dir: Path, scratch: Path
) -> Manifest:
    files: list[FileEntry] = []
    with (
        tempfile.TemporaryDirectory(dir=scratch, prefix=".allowhelp-backup-") as tmp,
        tarfile.open(fileobj=handle, mode=mode, format=tarfile.PAX_FORMAT) as tar,  # type: ignore[call-overload]
    ):
        anchors = anchor_lines(data_dir / ANCHOR_FILE)  # before the chain: heads it holds
        store_copy = _snapshot(data_dir / STORE_FILE, Path(tmp) / STORE_FILE)
        audit_copy = _snapshot(data_dir / AUDIT_FILE, Path(tmp) / AUDIT_FILE)
        store_schema, open_sessions = _store_facts(store_copy)
        seq, digest = read_head(audit_copy)
        files.append(add_path(tar, STORE_FILE, store_copy))
        files.append(add_path(tar, AUDIT_FILE, audit_copy))
        manifest = Manifest(
            allowhelp_version=__version__,
            created=utc_now(),
            source_host=socket.gethostname(),
            source_data=str(data_dir),
            source_recordings=str(recordings_dir),
            audit_head=f"{seq}:{digest}",
            store_schema=store_schema,
            open_sessions=open_sessions,
            tunnel_public=None,
            public_url=None,
        )
        return finish_archive(
            tar, manifest, files, anchors, data_dir=data_dir, recordings_dir=recordings_dir
        )


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)


def _snapshot(source: Path, target: Path) -> Path:
    """A consistent copy of a live WAL database (SQLite's online backup API)."""
    try:
        src = _open_ro(source)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot take a snapshot of {source}: {exc}") from exc
    return target


def _store_facts(copy: Path) -> tuple[int, tuple[str, ...]]:
    """The store's schema version and the sessions open in the snapshot."""
    try:
        store = Store.open(copy, read_only=True)  # checks the version is this code's
        try:
            open_sessions = tuple(sorted(session.id for session in store.open_sessions()))
        finally:
            store.close()
    except StoreError as exc:
        raise BackupError(f"the snapshot of the broker database cannot be read: {exc}") from exc
    return len(MIGRATIONS), open_sessions
