"""``allowhelp-broker backup`` and ``restore`` (docs/backup.md).

A failure raises ``BackupError``; ``main.py`` turns it into one line on stderr
and exit code 2, like every other command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.broker.model.database import STORE_ENV, PostgresUrl, parse_store

if TYPE_CHECKING:
    from allowhelp.broker.node.restore import RestoreResult

PROG = "allowhelp-broker"


def _size(n: int) -> str:
    """Bytes as people read them: 812 bytes, 6.0 KiB, 1.2 GiB."""
    if n < 1024:
        return f"{n} bytes"
    amount = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024 or unit == "GiB":
            break
    return f"{amount:.1f} {unit}"


def cmd_backup(args: argparse.Namespace, data_default: Callable[[], Path]) -> int:
    from allowhelp.broker.node.backup import take_backup

    if not args.verbose:  # a refused audit write is the error line itself, not a log line too
        logging.getLogger("allowhelp.broker.audit.log").setLevel(logging.ERROR)
    data = Path(args.data) if args.data is not None else data_default()
    store = _store(args)
    if store is not None:  # the shared database by pg_dump (node/pg_backup.py)
        from allowhelp.broker.node.pg_backup import take_pg_backup

        result = take_pg_backup(data, store, Path(args.output), recordings=args.recordings)
    else:
        result = take_backup(data, Path(args.output), recordings=args.recordings)
    manifest = result.manifest
    print(
        f"backup written: {result.output} ({_size(result.size)}, {len(manifest.files)} files, "
        f"{result.recordings} recordings; mode 0600: it holds the broker's private keys)"
    )
    print(f"audit head {manifest.audit_head}")
    if manifest.open_sessions:
        print(
            f"{len(manifest.open_sessions)} session(s) were live: a broker started on a restore "
            "of this backup ends them as broker_restart"
        )
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from allowhelp.broker.node.restore import restore_backup

    store = _store(args)
    if store is not None:  # into a new, empty database by pg_restore (node/pg_backup.py)
        from allowhelp.broker.node.pg_backup import restore_pg_backup

        result = restore_pg_backup(Path(args.file), Path(args.data), store)
    else:
        result = restore_backup(Path(args.file), Path(args.data))
    manifest, chain = result.manifest, result.chain
    print(
        f"restored {len(manifest.files)} files ({result.recordings} recordings) into "
        f"{result.data_dir}: backup of {manifest.source_host}:{manifest.source_data} "
        f"taken {manifest.created}"
    )
    if chain.ok:
        print(
            f"audit log intact: {chain.count} records, head {manifest.audit_head}; "
            f"broker.restored is record {result.restored_seq}"
        )
    else:
        print(
            f"{PROG}: warning: the backup's audit log is NOT intact: {chain.problem} "
            "(restored as it was; see docs/audit.md)",
            file=sys.stderr,
        )
    _said_sinks(result)
    if manifest.tunnel_public:
        port = manifest.tunnel_public.rpartition(":")[2]
        print(
            f"the enrolled PCs dial {manifest.tunnel_public} and trust this CA and tunnel key: "
            f"start `{PROG} serve --data {result.data_dir} --tunnel HOST:{port}"
            + (f" --public-url {manifest.public_url}`" if manifest.public_url else "`")
            + " where that address leads"
        )
    if manifest.open_sessions:
        print(
            f"{len(manifest.open_sessions)} session(s) live at backup time end as broker_restart "
            "when a broker first starts on it"
        )
    return 0


def _said_sinks(result: RestoreResult) -> None:
    """Where broker.restored went besides the chain (docs/backup.md, "Restoring")."""
    told = ["sent to syslog"] if result.syslog else []
    if result.anchor_file is not None and not result.anchor_error:
        told.append(f"its head anchored in {result.anchor_file}")
    elif result.anchor_file is not None:
        print(
            f"{PROG}: warning: broker.restored's head could not be written to the anchor "
            f"file {result.anchor_file} ({result.anchor_error})",
            file=sys.stderr,
        )
    source = (
        "the installation's audit.sinks.json, kept"
        if result.sinks_kept
        else "no audit.sinks.json in the folder: no syslog"
    )
    print(f"broker.restored {'; '.join(told) or 'is in the chain only'} ({source})")
    if result.anchors_set_aside is not None:
        print(
            f"{PROG}: warning: the anchor file's heads of the chain before the restore are "
            f"kept in {result.anchors_set_aside}; the anchor file begins again at record "
            f"{result.restored_seq} (restarted)",
            file=sys.stderr,
        )


def _store(args: argparse.Namespace) -> PostgresUrl | None:
    """``--store``, else $ALLOWHELP_STORE: a PostgreSQL store (docs/multinode.md)."""
    text: str | None = args.store
    return parse_store(text if text is not None else os.environ.get(STORE_ENV))


_STORE_HELP = (
    "the nodes' PostgreSQL database: postgresql://USER:PASSWORD@HOST:PORT/DB (default: "
    "$ALLOWHELP_STORE; without either, the SQLite files of the data folder; docs/multinode.md)"
)


def add_backup_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    data_default: Callable[[], Path],
) -> None:
    """Register ``backup`` and ``restore``; backup's ``--data`` defaults to ``data_default()``."""
    backup = subparsers.add_parser(
        "backup",
        help="a consistent backup of the data folder, taken while the broker runs",
        description="Write one tar file (gzip when FILE ends in .gz or .tgz) with the "
        "databases, keys and recordings. It holds the broker's private keys: written 0600.",
    )
    backup.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the broker's data folder (default: $ALLOWHELP_DATA or "
        "~/.local/share/allowhelp/broker)",
    )
    backup.add_argument(
        "--output", type=Path, required=True, metavar="FILE", help="the backup file"
    )
    backup.add_argument(
        "--recordings",
        type=Path,
        default=None,
        metavar="DIR",
        help="the recordings folder when serve runs with --recordings DIR "
        "(default: DATA/recordings)",
    )
    backup.add_argument("--store", default=None, metavar="URL", help=_STORE_HELP)
    backup.set_defaults(func=lambda args: cmd_backup(args, data_default))

    restore = subparsers.add_parser(
        "restore",
        help="restore a backup into a new, empty data folder",
        description="Check every file of FILE against its manifest, then put them in place "
        "at once. Recordings go to NEWDIR/recordings.",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by 'backup'")
    restore.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="NEWDIR",
        help="the new data folder (absent or empty; never a running broker's). It may hold "
        "the installation's audit.sinks.json: broker.restored then goes to its syslog and "
        "anchor file, and the file is kept (docs/backup.md)",
    )
    restore.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="a new, empty PostgreSQL database to restore a --store backup into "
        "(default: $ALLOWHELP_STORE)",
    )
    restore.set_defaults(func=cmd_restore)
