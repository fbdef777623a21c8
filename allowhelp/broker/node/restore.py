"""``allowhelp-broker restore``: a backup file back into a new data folder.

Nothing is put in place before everything is checked. The members go into a
hidden sibling folder (0700, files 0600), each hashed as it is written; only
names a backup can hold are accepted (never ``..``, a link or another name).
Then every member must match the manifest's size and SHA-256, and every
file the manifest lists must be there. The chain of the restored audit log is
walked (and compared with the restored anchor file), a ``broker.restored``
record is chained, and only then is the folder renamed into place: the target
is either absent or empty before, and complete after.

The target may hold the installation's ``audit.sinks.json`` (what its ``serve``
ran with: syslog, anchor file) and nothing else: it is read before anything is
unpacked, ``broker.restored`` goes through those sinks (``audit/restoring.py``:
``chain_restored``, which also sets aside an anchor file kept off the folder, once
its heads are found to be this chain's; if sealing or placing the folder fails
after that, ``put_back_on_failure`` puts it back: nothing restored holds for it
too), and the file is kept: moved into the restored folder just before it is
renamed into place (a backup never holds one).

A session that was live at backup time is still open in the restored store;
the first broker started on the folder ends it as ``broker_restart`` and
hashes its recording (as much of it as the backup holds) into that end record.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.anchor import ANCHOR_FILE, check_anchors, combine, read_anchors
from allowhelp.broker.audit.chain import AuditPlace, VerifyResult, verify
from allowhelp.broker.audit.opening import SINKS_FILE, AuditSinks, cli_sinks
from allowhelp.broker.audit.restoring import Restored, chain_restored, put_back_on_failure
from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable, BackupError
from allowhelp.broker.node.archive import (
    MANIFEST,
    MANIFEST_MAX,
    FileEntry,
    Manifest,
    fsync_dir,
    os_reason,
    path_of_member,
)
from allowhelp.broker.node.datafolder import AUDIT_FILE
from allowhelp.broker.settings import RECORDINGS
from allowhelp.broker.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# What a damaged or cut compressed stream raises while tarfile reads it.
_DAMAGE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    manifest: Manifest
    chain: VerifyResult  # the restored chain as the backup held it
    restored_seq: int  # the broker.restored record chained after it
    sinks_kept: bool = False  # the installation's audit.sinks.json, used and kept
    syslog: bool = False  # broker.restored went to a syslog collector
    anchor_file: Path | None = None  # and its head to this anchor file
    anchors_set_aside: Path | None = None  # that file's heads before the restore, kept here
    anchor_error: str = ""  # why the head could not be written to anchor_file ('' if it was)

    @property
    def recordings(self) -> int:
        return sum(1 for entry in self.manifest.files if entry.path.startswith(f"{RECORDINGS}/"))


def restore_backup(backup: Path, data_dir: Path) -> RestoreResult:
    """Restore ``backup`` into ``data_dir`` (absent or empty), all or nothing."""
    with restoring(backup, data_dir) as (source, target, scratch):
        sinks = read_sinks(scratch / AUDIT_FILE, target)
        manifest = _unpack(source, scratch)
        if manifest.store != "sqlite":
            raise BackupError(
                f"{source} holds a PostgreSQL database: restore it with --store URL of a new, "
                "empty database (docs/multinode.md)"
            )
        chain = _check_chain(scratch, manifest)
        restored = audit_restored(
            scratch / AUDIT_FILE, scratch, target, sinks=sinks, backup=source, manifest=manifest
        )
        with put_back_on_failure(restored):  # the anchor file set aside, if anything fails
            _seal(scratch)
            _place(scratch, target)
    return restore_result(target, manifest, chain, restored, sinks)


def read_sinks(place: AuditPlace, target: Path) -> AuditSinks:
    """The installation's sinks kept in ``target``, before anything is unpacked."""
    try:
        # the installation's, kept in the otherwise empty new folder; without one the
        # defaults (no syslog): a test restore elsewhere writes to no real sink
        return cli_sinks(place, target)
    except ValueError as exc:
        raise BackupError(f"nothing restored: {exc}") from exc


def restore_result(
    target: Path, manifest: Manifest, chain: VerifyResult, restored: Restored, sinks: AuditSinks
) -> RestoreResult:
    kept = (target / SINKS_FILE).is_file()
    return RestoreResult(
        target,
        manifest,
        chain,
        restored.seq,
        sinks_kept=kept,
        syslog=sinks.syslog_url is not None,
        anchor_file=restored.anchor_file,
        anchors_set_aside=restored.set_aside,
        anchor_error=restored.not_anchored,
    )


@contextmanager
def restoring(backup: Path, data_dir: Path) -> Iterator[tuple[Path, Path, Path]]:
    """What every restore checks first, and its scratch folder beside the target:
    yields (backup, target, scratch), all absolute; if anything fails the scratch
    folder goes, and an ``OSError`` (a full disk, a file that cannot be written)
    becomes one line. Nothing is in ``target`` until ``_place``."""
    backup = backup.expanduser().absolute()
    target = data_dir.expanduser().absolute()
    if not backup.is_file():
        raise BackupError(f"no backup file at {backup}")
    _check_target(target)
    try:
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restoring-"))
    except OSError as exc:
        raise BackupError(f"nothing restored: {os_reason(exc)}") from exc
    try:
        yield backup, target, scratch
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BackupError(f"nothing restored: {os_reason(exc)}") from exc
        raise


def _place(scratch: Path, target: Path) -> None:
    """The checked scratch folder becomes the data folder, in one rename; the
    installation's ``audit.sinks.json`` goes into it first (and back if it fails)."""
    sinks = target / SINKS_FILE
    kept = _kept_sinks(sinks)
    if kept:
        os.rename(sinks, scratch / SINKS_FILE)
        os.chmod(scratch / SINKS_FILE, 0o600)
        fsync_dir(scratch)
    try:
        os.rename(scratch, target)  # replaces an empty folder; refuses one with content
    except OSError as exc:
        if kept:
            os.rename(scratch / SINKS_FILE, sinks)
        raise BackupError(
            f"{target} is not empty any more ({exc.strerror}): restore into a new folder"
        ) from exc
    try:  # restored from here on: a folder not synced is said, not "nothing restored"
        fsync_dir(target.parent)
    except OSError as exc:
        log.warning("%s restored; its parent folder not synced: %s", target, os_reason(exc))


def _check_target(target: Path) -> None:
    if not target.parent.is_dir():
        raise BackupError(f"the folder {target.parent} does not exist: create it first")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise BackupError(f"{target} exists and is not a folder: give --data a new folder")
    if target.is_dir() and any(not _kept_sinks(entry) for entry in target.iterdir()):
        raise BackupError(
            f"{target} is not empty: restore into a new folder (never over a broker's data "
            "folder; stop that broker and move its folder aside first)"
        )


def _kept_sinks(entry: Path) -> bool:
    """The installation's ``audit.sinks.json``: the one file a target may hold."""
    return entry.name == SINKS_FILE and entry.is_file() and not entry.is_symlink()


def _unpack(backup: Path, scratch: Path) -> Manifest:
    """Every member into ``scratch``, checked against the manifest at the end."""
    try:
        tar = tarfile.open(backup, mode="r:*")  # noqa: SIM115 - closed below, errors told apart
    except _DAMAGE as exc:
        raise BackupError(f"{backup} is not an allowhelp broker backup (not a tar file)") from exc
    written: dict[str, FileEntry] = {}
    raw: bytes | None = None
    try:
        with tar:
            for member in tar:
                if raw is not None:
                    raise BackupError(
                        f"{backup} is not an allowhelp broker backup (data after its manifest)"
                    )
                if member.name == MANIFEST and member.isfile() and member.size <= MANIFEST_MAX:
                    raw = _read_member(tar, member)
                    continue
                path = path_of_member(member.name)
                if path is None or not member.isfile():
                    raise BackupError(
                        f"{backup} is not an allowhelp broker backup (it holds {member.name!r})"
                    )
                if path in written:
                    raise BackupError(f"{backup} is damaged ({member.name} twice)")
                written[path] = _extract(tar, member, path, scratch)
    except _DAMAGE as exc:
        raise BackupError(
            f"{backup} is truncated or damaged ({exc}): use another copy of the backup"
        ) from exc
    if raw is None:
        if not written:
            raise BackupError(f"{backup} is not an allowhelp broker backup (no manifest)")
        raise BackupError(
            f"{backup} is truncated (it ends before its manifest): use another copy of the backup"
        )
    manifest = Manifest.parse(raw, str(backup))
    _match(backup, manifest, written)
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    source = tar.extractfile(member)
    if source is None:
        raise BackupError(f"{member.name} cannot be read")
    raw = source.read()
    if len(raw) != member.size:
        raise tarfile.ReadError("unexpected end of data")
    return raw


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, scratch: Path) -> FileEntry:
    source = tar.extractfile(member)
    if source is None:
        raise BackupError(f"{member.name} cannot be read")
    target = scratch / path
    target.parent.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != member.size:
        raise tarfile.ReadError("unexpected end of data")
    return FileEntry(path, size, digest.hexdigest())


def _match(backup: Path, manifest: Manifest, written: dict[str, FileEntry]) -> None:
    listed = manifest.entries()
    for path, got in written.items():
        want = listed.get(path)
        if want is None:
            raise BackupError(f"{backup} is damaged ({path} is not in its manifest)")
        if got != want:
            raise BackupError(
                f"{backup} is damaged ({path} does not match its SHA-256 in the manifest): "
                "use another copy of the backup"
            )
    missing = sorted(set(listed) - set(written))
    if missing:
        raise BackupError(
            f"{backup} is truncated or damaged ({missing[0]} is missing): use another copy"
        )
    if manifest.store == "sqlite" and manifest.store_schema > len(MIGRATIONS):
        raise BackupError(
            f"{backup} was taken by a newer allowhelp ({manifest.allowhelp_version}, database "
            f"schema {manifest.store_schema}): restore it with that version or later"
        )


def _check_chain(scratch: Path, manifest: Manifest) -> VerifyResult:
    """The restored chain, walked up to the manifest's head and against its anchors."""
    seq, digest = manifest.audit_head.split(":")
    path = scratch / AUDIT_FILE
    try:
        result = verify(path, (int(seq), digest))
        anchor_file = scratch / ANCHOR_FILE
        if anchor_file.is_file() and (anchors := read_anchors(anchor_file)):
            result = combine(result, check_anchors(path, anchors, ANCHOR_FILE))
    except AuditCorrupt as exc:
        raise BackupError(f"the backup's audit log cannot be read: {exc}") from exc
    return result


def audit_restored(
    place: AuditPlace,
    scratch: Path,
    target: Path,
    *,
    sinks: AuditSinks,
    backup: Path,
    manifest: Manifest,
) -> Restored:
    """Chain ``broker.restored`` in the restored log, where this history came from,
    through the installation's sinks (syslog, anchors: ``audit/opening.py``).

    The restored folder's anchor file (when the backup holds one) holds the new head
    too. Without one, none is made here: the first start on the folder tells and
    chains audit.anchors.missing with its real path (no scratch path in the chain)."""
    details: dict[str, object] = {
        "backup": str(backup),
        "created": manifest.created,
        "head": manifest.audit_head,
        "source_host": manifest.source_host,
        "source_data": manifest.source_data,
        "open_sessions": len(manifest.open_sessions),
    }
    try:
        head = int(manifest.audit_head.split(":")[0])
        return chain_restored(place, scratch, target, sinks, details, backup_head=head)
    except (AuditUnavailable, AuditCorrupt) as exc:
        raise BackupError(f"nothing restored: {exc}") from exc


def _seal(scratch: Path) -> None:
    """Owner-only modes, and everything on disk before the rename."""
    for folder, _, names in os.walk(scratch):
        for name in names:
            os.chmod(Path(folder) / name, 0o600)
        os.chmod(folder, 0o700)
        fsync_dir(Path(folder))
