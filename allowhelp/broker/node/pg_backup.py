"""``allowhelp-broker backup`` and ``restore`` with ``--store postgresql://`` (#21).

The same archive as a SQLite backup (``archive.py``), in the same spirit, with
PostgreSQL's own ``pg_dump`` and ``pg_restore`` for the database:

backup
  1. ``broker.backup`` into the shared chain first (audit before action: if the
     chain takes no record, no backup is taken), through the node's sinks (its
     ``audit.sinks.json``: syslog, anchor file), as every command's record;
  2. this node's anchor file (only heads already committed are in it);
  3. one read-only REPEATABLE READ transaction whose snapshot is exported
     (``pg_export_snapshot``): the audit head, the store's schema version and the
     open sessions are read in it, and ``pg_dump --format=custom --snapshot`` dumps
     exactly that snapshot, so the dump and the manifest's head are one instant of
     every node's writes (the store is written behind the chain there too);
  4. the keys, ``broker.json`` and the recordings of this node's folder, as for
     SQLite; ``FILE.partial`` (0600), renamed into place once complete.

restore
  the folder absent or empty and the database empty (a new one: ``createdb``),
  never over what nodes serve from; every member checked against the manifest
  before anything is loaded; ``pg_restore --single-transaction --exit-on-error``
  (all of the dump or none of it); the restored chain walked up to the manifest's
  head and compared with the restored anchors; ``broker.restored`` chained through
  the installation's sinks (its ``audit.sinks.json`` kept in the new folder, as for
  SQLite: ``restore.py``); then the folder (keys, recordings: no dump) renamed into
  place.

The password goes to ``pg_dump``/``pg_restore`` in their environment
(``PGPASSWORD``), never on a command line, and never into a message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from allowhelp import __version__
from allowhelp.broker.audit.anchor import ANCHOR_FILE, check_anchors, combine, read_anchors
from allowhelp.broker.audit.chain import VerifyResult, verify
from allowhelp.broker.audit.entry import utc_now
from allowhelp.broker.audit.restoring import put_back_on_failure
from allowhelp.broker.errors import AuditCorrupt, AuditUnavailable, BackupError
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.node.archive import PG_DUMP, PKI_FILES, Manifest
from allowhelp.broker.node.backup import (
    BackupResult,
    _check_output,
    _recordings_folder,
    _tar_mode,
    audit_backup,
    write_backup_file,
)
from allowhelp.broker.node.backup_members import add_path, anchor_lines, finish_archive
from allowhelp.broker.node.restore import (
    RestoreResult,
    _place,
    _seal,
    _unpack,
    audit_restored,
    read_sinks,
    restore_result,
    restoring,
)
from allowhelp.broker.pglink import link_options
from allowhelp.broker.store.pg_migrations import PG_MIGRATIONS

CONNECT_TIMEOUT = 10  # seconds to reach the database (also PGCONNECT_TIMEOUT for the tools)
_OPEN = "('requested', 'awaiting_consent', 'active')"


@dataclass(frozen=True)
class _Snapshot:
    name: str  # pg_export_snapshot(): what pg_dump --snapshot takes
    head: str  # SEQ:HASH
    store_schema: int
    open_sessions: tuple[str, ...]


def take_pg_backup(
    data_dir: Path, store: PostgresUrl, output: Path, *, recordings: Path | None = None
) -> BackupResult:
    """Back up the shared database and this node's folder (keys, recordings) to ``output``."""
    data_dir = _check_keys_folder(data_dir)
    recordings_dir = _recordings_folder(data_dir, recordings)
    output = output.expanduser().absolute()
    mode = _tar_mode(output)
    _check_output(output)
    dump_program = pg_program("pg_dump")
    details: dict[str, object] = {
        "data": str(data_dir),
        "recordings": str(recordings_dir),
        "store": str(store),
    }
    audit_backup(store, data_dir, output, details)

    def write(handle: IO[bytes]) -> Manifest:
        with (
            tempfile.TemporaryDirectory(dir=output.parent, prefix=".allowhelp-backup-") as tmp,
            tarfile.open(fileobj=handle, mode=mode, format=tarfile.PAX_FORMAT) as tar,  # type: ignore[call-overload]
        ):
            anchors = anchor_lines(data_dir / ANCHOR_FILE)  # before the snapshot
            dump = Path(tmp) / PG_DUMP
            with _exported_snapshot(store) as snapshot:
                _run(
                    dump_program,
                    store,
                    ["--format=custom", f"--snapshot={snapshot.name}", f"--file={dump}"],
                )
            files = [add_path(tar, PG_DUMP, dump)]
            manifest = Manifest(
                allowhelp_version=__version__,
                created=utc_now(),
                source_host=socket.gethostname(),
                source_data=str(data_dir),
                source_recordings=str(recordings_dir),
                audit_head=snapshot.head,
                store_schema=snapshot.store_schema,
                open_sessions=snapshot.open_sessions,
                tunnel_public=None,
                public_url=None,
                store="postgresql",
            )
            return finish_archive(
                tar, manifest, files, anchors, data_dir=data_dir, recordings_dir=recordings_dir
            )

    return write_backup_file(output, write)


def restore_pg_backup(backup: Path, data_dir: Path, store: PostgresUrl) -> RestoreResult:
    """Restore ``backup`` into the empty database ``store`` and the new folder
    ``data_dir``: nothing is loaded before every member is checked."""
    with restoring(backup, data_dir) as (source, target, scratch):
        restore_program = pg_program("pg_restore")
        sinks = read_sinks(store, target)
        _check_empty(store)
        manifest = _unpack(source, scratch)
        if manifest.store != "postgresql":
            raise BackupError(
                f"{source} holds SQLite files, not a PostgreSQL dump: restore it without "
                "--store (and with $ALLOWHELP_STORE unset)"
            )
        if manifest.store_schema > len(PG_MIGRATIONS):
            raise BackupError(
                f"{source} was taken by a newer allowhelp ({manifest.allowhelp_version}, "
                f"database schema {manifest.store_schema}): restore it with that version or later"
            )
        dump = scratch / PG_DUMP
        flags = ["--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges"]
        _run(restore_program, store, [*flags, str(dump)])
        dump.unlink()  # the data folder holds no copy of the database
        try:
            chain = _check_chain(store, scratch, manifest)
            restored = audit_restored(
                store, scratch, target, sinks=sinks, backup=source, manifest=manifest
            )
            with put_back_on_failure(restored):  # the anchor file set aside, if this fails
                _seal(scratch)
                _place(scratch, target)
        except BackupError as exc:
            raise BackupError(
                f"{exc} (the database holds the restored data now: drop it and create it "
                "again before trying once more)"
            ) from exc
    return restore_result(target, manifest, chain, restored, sinks)


def pg_program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} not found: install PostgreSQL's client programs (Debian: "
            "postgresql-client) to back up or restore a --store database (docs/multinode.md)"
        )
    return found


def _check_keys_folder(data_dir: Path) -> Path:
    """A node's folder holds the keys (its databases are in PostgreSQL)."""
    data_dir = data_dir.expanduser().absolute()
    missing = [name for name in PKI_FILES if not (data_dir / name).is_file()]
    if not data_dir.is_dir() or missing:
        raise BackupError(
            f"{data_dir} is not a broker node's data folder (no {', '.join(missing) or 'folder'}):"
            " give --data the folder serve uses with this --store"
        )
    return data_dir


def _connect(store: PostgresUrl, **options: Any) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            store.url,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="allowhelp-backup",
            # a database host that goes away under a backup or restore breaks its
            # connection instead of leaving the command waiting (the store's own links)
            **link_options(),
            **options,
        )
    except psycopg.Error as exc:
        raise BackupError(f"cannot reach {store}: {_first_line(str(exc))}") from exc


@contextmanager
def _exported_snapshot(store: PostgresUrl) -> Iterator[_Snapshot]:
    """A read-only snapshot, held (its transaction open) while the caller dumps it."""
    conn = _connect(store)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        name = _one(conn, "SELECT pg_export_snapshot()")
        schema = int(_one(conn, "SELECT max(version) FROM schema_version") or 0)
        if schema != len(PG_MIGRATIONS):
            raise BackupError(
                f"{store} has store schema {schema}; this allowhelp writes {len(PG_MIGRATIONS)}: "
                "back it up with the allowhelp its nodes run"
            )
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            raise BackupError(f"{store} holds no audit log yet: nothing to back up")
        rows = conn.execute(f"SELECT id FROM sessions WHERE state IN {_OPEN} ORDER BY id")  # noqa: S608 - fixed text
        yield _Snapshot(str(name), f"{last[0]}:{last[1]}", schema, tuple(r[0] for r in rows))
    except psycopg.Error as exc:
        raise BackupError(f"no backup written: {store}: {_first_line(str(exc))}") from exc
    finally:
        conn.close()  # the snapshot's transaction ends here, once the dump has it


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql.encode()).fetchone()
    return row[0] if row is not None else None


def _check_empty(store: PostgresUrl) -> None:
    with _connect(store, autocommit=True) as conn:
        try:
            tables = _one(
                conn,
                "SELECT count(*) FROM pg_catalog.pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            )
        except psycopg.Error as exc:
            raise BackupError(f"cannot read {store}: {_first_line(str(exc))}") from exc
    if tables:
        raise BackupError(
            f"{store} is not empty ({tables} tables): restore into a new, empty database "
            "(createdb; never over the database broker nodes serve from)"
        )


def _run(program: str, store: PostgresUrl, arguments: list[str]) -> None:
    """``pg_dump``/``pg_restore`` on ``store``; the password in the environment only."""
    url, env = _client_url(store)
    done = subprocess.run(
        [program, *arguments, f"--dbname={url}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        name = Path(program).name
        said = _first_line(done.stderr) or f"exit status {done.returncode}"
        raise BackupError(f"{name} failed on {store}: {said}")


def _client_url(store: PostgresUrl) -> tuple[str, dict[str, str]]:
    """The URL without its password, and an environment that carries it."""
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT)}
    url, password = store.without_password()
    if password is not None:
        env["PGPASSWORD"] = password
    return url, env


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _check_chain(store: PostgresUrl, scratch: Path, manifest: Manifest) -> VerifyResult:
    """The restored chain, walked up to the manifest's head and against the anchors."""
    seq, digest = manifest.audit_head.split(":")
    try:
        result = verify(store, (int(seq), digest))
        anchor_file = scratch / ANCHOR_FILE
        if anchor_file.is_file() and (anchors := read_anchors(anchor_file)):
            result = combine(result, check_anchors(store, anchors, ANCHOR_FILE))
    except (AuditCorrupt, AuditUnavailable) as exc:
        raise BackupError(f"the restored audit log cannot be read: {exc}") from exc
    return result
