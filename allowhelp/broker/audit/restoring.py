"""``restore``'s record: ``broker.restored`` chained through the sinks of the
installation it restores (``audit/opening.py`` opens every writer of the chain).

:func:`chain_restored` writes ``broker.restored`` through the ``audit.sinks.json``
kept in the new folder (``opening.cli_sinks``, read before anything is
unpacked; the restore keeps the file), else the defaults. It skips the start-up
check in its scratch folder (and makes no file there): the first start on the
restored folder tells a missing file with the folder's real path. The restored
folder's own anchor file (the backup's) goes on with the new head.

An anchor file elsewhere (``--audit-anchors``, off the host) holds the old chain's
heads, some of them past the backup's head, which the restored chain does not have:
it is set aside whole (renamed ``NAME.before-restore-TIMESTAMP``, named in the
record's details: the old chain's evidence, untouched) and begun again with
``broker.restored``'s head marked ``restarted``, so ``audit verify --anchors`` on it
passes and says it vouches from the restore on, and a broker started with it finds
no truncation. Before anything is chained:

* its heads up to the backup's head must match the restored chain (or it holds no
  head yet): a file that vouches for another chain (another installation's) is never
  set aside; the restore is refused, nothing restored. A broker still running on the
  chain the backup came from passes this check (its heads match): stop it first;
* it must not be in another broker's data folder (one holding ``audit.sqlite3``, a
  ``node.id`` or an ``audit.sinks.json``: the old folder, restoring next to it, or a
  node's on a shared store): that is that folder's own file;
* the rename must be possible: the new name is made and removed once in its folder.

When the set-aside happens: *before* the folder is put in place, right after the
record is chained in the scratch folder. The record must be chained before the
folder is in place (audit before the action), and its head belongs in the file
from then on: a broker started on the restored folder the moment it is in place
must find the file begun with it, not the old chain's heads past the backup's head
(a false "truncated"). So the file is set aside before ``_seal``/``_place`` and, if
they fail (:func:`put_back_on_failure`), put back: the set-aside file renamed over
the new one when that holds only the heads this restore wrote; otherwise both are
left and the error names them. "Nothing restored" then holds for the anchor file too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.anchor import (
    RESTARTED,
    anchor_file_state,
    check_anchors,
    read_anchors,
)
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.format import AuditPlace
from allowhelp.broker.audit.opening import (
    CLI_ACTOR,
    NO_HEAD,
    AuditSinks,
    open_with_sinks,
)
from allowhelp.broker.audit.options import AuditOptions
from allowhelp.broker.errors import AuditCorrupt, BackupError

log = logging.getLogger(__name__)

DATA_AUDIT_FILE = "audit.sqlite3"  # node/datafolder.py's AUDIT_FILE (a higher floor)


@dataclass(frozen=True)
class Restored:
    """``broker.restored`` as chained; ``anchor_file``: where its head went (its path
    once the folder is in place), None for none; ``set_aside``: that file's earlier
    content, kept under this name, the file begun again with the head (``restarted``);
    ``not_anchored``: why the head could not be written to ``anchor_file`` ('' if it was)."""

    seq: int
    hash: str
    anchor_file: Path | None = None
    set_aside: Path | None = None
    not_anchored: str = ""
    written_to: Path | None = None  # the anchor file as written (before the folder moved)


def chain_restored(
    place: AuditPlace,
    scratch: Path,
    target: Path,
    sinks: AuditSinks,
    details: dict[str, object],
    *,
    backup_head: int,
) -> Restored:
    """Chain ``broker.restored`` in the restored log (unpacked in ``scratch``, to be
    ``target``, its chain ending at ``backup_head``) through ``sinks``: to syslog, and
    its head to the anchor file.

    The restored folder's own anchor file goes on (none is made when the backup held
    none). Another one (``--audit-anchors PATH``) holding a head, or begun, is set
    aside after the record is chained and begun again with its head, ``restarted``;
    ``BackupError`` (nothing chained, nothing renamed) when its heads do not match the
    restored chain or it cannot be renamed."""
    options = sinks.options
    path = _restored_anchor_file(options, scratch, target) if options else None
    state = anchor_file_state(path) if path is not None else "missing"
    if state in NO_HEAD:  # no head written, no file made: the first start tells it
        path = None
    aside = None
    if path is not None and path.parent != scratch and state in ("ok", "begun"):
        _check_not_a_data_folders(path)
        if state == "ok":
            _check_same_chain(place, path, backup_head)
        aside = _renamable(path)
        details = {**details, "anchors_set_aside": str(aside)}
    every = options.anchor_every if options is not None else 1
    through = AuditSinks(
        sinks.syslog_url,
        AuditOptions(anchors=path, anchor_every=every) if path and not aside else None,
    )
    opened = open_with_sinks(place, scratch, through, actor=CLI_ACTOR, check=False)
    sink = opened.audit.anchors
    set_aside = False
    try:
        record = opened.audit.append(
            "broker.restored", actor=CLI_ACTOR, target=str(target), details=details
        )
        if path is not None and aside is not None:
            try:
                _rename(path, aside)
            except OSError as exc:
                raise BackupError(
                    f"nothing restored: the anchor file {path} could not be set aside as "
                    f"{aside.name} ({exc.strerror or exc})"
                ) from exc
            set_aside = True
            sink = AnchorSink(path, every, opened.forwarder)
            sink.anchor(record.seq, record.hash, RESTARTED)
    except BaseException:
        with contextlib.suppress(Exception):
            opened.close()
        raise
    try:
        opened.close()  # the stop anchor: broker.restored's head in the folder's own file
    except BaseException as exc:
        left = ""
        if set_aside and path is not None and aside is not None:
            left = put_back(Restored(record.seq, record.hash, path, aside, written_to=path))
        if not left:
            raise
        raise BackupError(f"nothing restored: {exc}; {left}") from exc
    not_anchored = ""
    if path is not None and sink is not None and sink.state.last_seq != record.seq:
        not_anchored = sink.state.last_error or "not written"
    written = path
    if path is not None and path.parent == scratch:
        path = target / path.name
    return Restored(record.seq, record.hash, path, aside, not_anchored, written)


@contextlib.contextmanager
def put_back_on_failure(restored: Restored) -> Iterator[None]:
    """What follows the set-aside (``_seal``, ``_place``): if it fails, the anchor
    file set aside is put back, or the error says where its heads are."""
    try:
        yield
    except BaseException as exc:
        if restored.set_aside is None:
            raise
        left = put_back(restored)
        if not left:
            raise
        reason = str(exc) if isinstance(exc, BackupError) else f"nothing restored: {exc}"
        raise BackupError(f"{reason}; {left}") from exc


def put_back(restored: Restored) -> str:
    """The set-aside anchor file renamed back over the one begun by this restore, when
    that holds only the head this restore wrote; '' when done, else what is where."""
    path, aside = restored.written_to, restored.set_aside
    if path is None or aside is None:
        return ""
    try:
        heads = read_anchors(path) if path.exists() else []
        if any((a.seq, a.hash) != (restored.seq, restored.hash) for a in heads):
            raise OSError(f"{path} holds heads this restore did not write")
        _rename(aside, path)
    except OSError as exc:
        log.error("the anchor file %s set aside as %s was not put back: %s", path, aside, exc)
        return (
            f"the anchor file {path} was set aside and could not be put back "
            f"({exc.strerror or exc}): its heads before the restore are in {aside}"
        )
    return ""


def _check_same_chain(place: AuditPlace, path: Path, backup_head: int) -> None:
    """The file's heads up to the backup's head are the restored chain's."""
    try:
        heads = [a for a in read_anchors(path) if a.seq <= backup_head]
        found = check_anchors(place, heads, str(path)) if heads else None
    except (OSError, AuditCorrupt) as exc:
        raise BackupError(
            f"nothing restored: the anchor file {path} cannot be read: {exc}"
        ) from exc
    if found is not None and not found.ok:
        raise BackupError(
            f"nothing restored: the anchor file {path} named in audit.sinks.json holds heads "
            f"of another chain than this backup's ({found.problem}); it is left as it is: "
            "restore into a folder without that audit.sinks.json, or name another anchor "
            "file in it"
        )


# What a broker data folder holds, whatever its store: the SQLite chain, a node's id,
# the sinks serve remembers (a PostgreSQL node's folder has no audit.sqlite3).
DATA_FOLDER_MARKS = (DATA_AUDIT_FILE, "node.id", "audit.sinks.json")


def _check_not_a_data_folders(path: Path) -> None:
    """An anchor file in another broker data folder is that folder's own."""
    if any((path.parent / mark).exists() for mark in DATA_FOLDER_MARKS):
        raise BackupError(
            f"nothing restored: the anchor file {path} named in audit.sinks.json is in the "
            f"broker data folder {path.parent} (it is that folder's own); it is left as it "
            "is: restore into a folder without that audit.sinks.json, or name another "
            "anchor file in it"
        )


def _renamable(path: Path) -> Path:
    """The name ``path`` is set aside as, checked: it can be made in the file's folder
    (made and removed once), before anything is chained."""
    try:
        aside = _aside_name(path)
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(aside)
    except OSError as exc:
        raise BackupError(
            f"nothing restored: the anchor file {path} cannot be set aside in its folder "
            f"({exc.strerror or exc})"
        ) from exc
    return aside


def _restored_anchor_file(options: AuditOptions, scratch: Path, target: Path) -> Path:
    """The anchor file the restored folder writes to, in ``scratch`` while it is there."""
    path = options.anchor_file(scratch)
    if path.parent in (target, target.resolve()):  # the folder's own, named by its path
        return scratch / path.name
    return path


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.before-restore-{stamp}")
    number = 1
    while aside.exists() or aside.is_symlink():
        number += 1
        aside = path.with_name(f"{path.name}.before-restore-{stamp}-{number}")
    return aside


def _rename(source: Path, to: Path) -> None:
    """``source`` renamed ``to`` (raises only when the rename itself failed), then the
    folder synced so it is on disk before anything else is written: a folder that
    cannot be synced (some network or FUSE mounts, a write-and-enter-only folder) is
    logged, the rename done all the same."""
    os.rename(source, to)
    try:
        fd = os.open(to.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("%s renamed %s; its folder not synced: %s", source, to.name, exc)
