"""``allowhelp-broker audit verify|head|export``.

These only read the audit file (SQLite read-only mode), so they are safe to run
while the broker is serving, or on a copy of the data folder on another machine.

``verify --anchors FILE`` also compares every head anchored in FILE (the
broker's anchor file, or a syslog collector's file with its AH1905 lines) with
the database: that is what catches a rewrite with recomputed hashes, as long
as FILE was kept where the rewriter could not write (docs/audit.md).

Exit codes: 0 success; 1 the log is not intact (verify) or could not be read;
2 no audit log there or a bad argument. Every failure is one line on stderr
starting with ``allowhelp-broker: error:``; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from allowhelp.broker.audit.anchor import check_anchors, combine, read_anchors, restarted_at
from allowhelp.broker.audit.chain import AuditPlace, VerifyResult
from allowhelp.broker.audit.log import read_head, read_records, verify
from allowhelp.broker.errors import AuditCorrupt, BrokerError
from allowhelp.broker.model.database import STORE_ENV, PostgresUrl

log = logging.getLogger(__name__)

PROG = "allowhelp-broker"
AUDIT_FILE = "audit.sqlite3"
EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2
_HEAD_RE = re.compile(r"(\d+):([0-9a-f]{64})")

Handler = Callable[[argparse.Namespace], int]


class _UsageError(Exception):
    """A bad argument: exit 2, like argparse's own usage errors."""


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _audit_place(args: argparse.Namespace, data_default: Callable[[], Path]) -> AuditPlace:
    """``--store URL`` (or $ALLOWHELP_STORE when no ``--data``): the shared database;
    else the data folder's file."""
    text = args.store if args.store is not None else None
    if text is None and args.data is None:
        text = os.environ.get(STORE_ENV) or None
    if text is not None:
        if args.data is not None:
            raise _UsageError("give --data or --store, not both")
        try:
            return PostgresUrl.parse(text)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    return _audit_file(args, data_default)


def _audit_file(args: argparse.Namespace, data_default: Callable[[], Path]) -> Path:
    # The default is computed late so that ALLOWHELP_DATA is read at run time.
    data = Path(args.data) if args.data is not None else data_default()
    args.data = data
    path = data / AUDIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no audit log at {path} (is --data the broker's data folder?)")
    return path


def _parse_head(text: str) -> tuple[int, str]:
    match = _HEAD_RE.fullmatch(text.strip().lower())
    if match is None:
        raise _UsageError(
            f"--head must look like SEQ:HASH as printed by 'audit head', got {text!r}"
        )
    return int(match.group(1)), match.group(2)


def _guarded(body: Handler) -> Handler:
    """Turn every failure into one line on stderr and an exit code."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except _UsageError as exc:
            _error(str(exc))
            return EXIT_USAGE
        except FileNotFoundError as exc:
            _error(str(exc))
            return EXIT_USAGE
        except (BrokerError, OSError, sqlite3.Error, ValueError) as exc:
            _error(str(exc) or type(exc).__name__)
            return EXIT_BAD
        except Exception as exc:  # a bug, but the operator still gets one line
            log.debug("audit command failed", exc_info=True)
            _error(f"unexpected {type(exc).__name__}: {exc}")
            return EXIT_BAD

    return handler


def _verify(args: argparse.Namespace, path: AuditPlace, head: tuple[int, str] | None) -> int:
    """``audit verify``: the walk, the saved head and the anchors, in one verdict."""
    anchors = read_anchors(Path(args.anchors)) if args.anchors is not None else None
    if anchors is not None and not anchors:
        raise _UsageError(f"no anchored heads (SEQ:HASH lines or AH1905 lines) in {args.anchors}")
    restarted = restarted_at(anchors) if anchors is not None else None
    started = time.perf_counter()
    checked, vouched = 0, head[0] if head is not None else 0
    try:
        result = verify(path, head)
        if anchors is not None:
            against = check_anchors(path, anchors, str(args.anchors))
            result, checked = combine(result, against), against.checked
            vouched = max(vouched, against.good_seq)
    except AuditCorrupt as exc:
        result = VerifyResult(False, 0, 0, None, str(exc))
    if args.json:
        answer = {
            "ok": result.ok,
            "count": result.count,
            "last_seq": result.last_seq,
            "last_hash": result.last_hash,
            "first_bad_seq": result.first_bad_seq,
            "problem": result.problem,
            "anchors_checked": checked,
            "vouched_to": vouched,  # records after it could be cut off unseen
            # the anchor file was made again here (audit.anchors.missing): a rewrite of
            # the records before it, made before then, is not caught by its heads
            "vouched_from": restarted,
            "seconds": round(time.perf_counter() - started, 3),
        }
        print(json.dumps(answer))
        return EXIT_OK if result.ok else EXIT_BAD
    if result.ok:
        head_text = f"{result.last_seq}:{result.last_hash}"
        also = f"; {checked} anchored head(s) match" if anchors is not None else ""
        print(f"audit log intact: {result.count} records, head {head_text}{also}")
        if restarted is not None:
            print(_restarted(args.anchors, restarted), file=sys.stderr)
        if vouched < result.last_seq:  # what a hash chain alone cannot tell
            print(_unvouched(vouched), file=sys.stderr)
        return EXIT_OK
    if result.first_bad_seq is None:  # not readable as an audit log at all
        print(f"audit log NOT intact: {result.problem}")
        return EXIT_BAD
    print(f"audit log NOT intact: {result.problem}")
    print(
        f"{result.count} record(s) before it are intact (up to seq {result.last_seq})",
        file=sys.stderr,
    )
    return EXIT_BAD


def _restarted(anchors: str, seq: int) -> str:
    return (
        f"note: {anchors} was begun again at record {seq} (it was missing, empty, "
        f"replaced or cut short: audit.anchors.missing; set aside by a restore: "
        f"broker.restored; or a new node's: audit.anchors.begun); its heads vouch only "
        f"from record {seq} on, so a "
        f"rewrite of records 1 to {seq - 1} made before then would not be seen"
    )


def _unvouched(vouched: int) -> str:
    if vouched == 0:
        return (
            "note: records cut off the end cannot be seen without --head SEQ:HASH or "
            "--anchors FILE (a head kept off this machine)"
        )
    return (
        f"note: vouched for up to seq {vouched} by a head kept off this machine; records "
        "after it could be cut off unseen"
    )


def add_audit_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    data_default: Callable[[], Path],
) -> None:
    """Register ``audit`` and its subcommands; ``--data`` falls back to ``data_default()``."""

    def cmd_verify(args: argparse.Namespace) -> int:
        head = _parse_head(args.head) if args.head is not None else None
        return _verify(args, _audit_place(args, data_default), head)

    def cmd_head(args: argparse.Namespace) -> int:
        seq, digest = read_head(_audit_place(args, data_default))
        print(f"{seq}:{digest}")
        return EXIT_OK

    def cmd_export(args: argparse.Namespace) -> int:
        if not (
            args.after.isascii() and args.after.isdigit()
        ):  # parsed here so the error has the usual prefix
            raise _UsageError(f"--after must be a record number (0 or more), got {args.after!r}")
        out = sys.stdout
        try:
            for record in read_records(_audit_place(args, data_default), int(args.after)):
                out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            out.flush()
        except BrokenPipeError:
            # The reader went away (e.g. `| head`); do not let Python complain at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
            return EXIT_BAD
        return EXIT_OK

    audit = subparsers.add_parser("audit", help="check and export the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    data_help = "the broker's data folder (holds audit.sqlite3)"
    store_help = (
        "the nodes' shared PostgreSQL database, postgresql://... (default: $ALLOWHELP_STORE "
        "when no --data)"
    )

    p_verify = audit_sub.add_parser(
        "verify", help="check the hash chain; exit 0 when intact, else name the first bad record"
    )
    p_verify.add_argument("--data", type=Path, default=None, help=data_help)
    p_verify.add_argument("--store", default=None, metavar="URL", help=store_help)
    p_verify.add_argument(
        "--head",
        default=None,
        metavar="SEQ:HASH",
        help="a head saved earlier (e.g. from 'audit head' or syslog); catches records cut off",
    )
    p_verify.add_argument(
        "--anchors",
        default=None,
        metavar="FILE",
        help="check every head anchored in FILE (the broker's anchor file, or a syslog "
        "collector's file); catches a rewrite with recomputed hashes",
    )
    p_verify.add_argument(
        "--json", action="store_true", help="print the outcome as one JSON object"
    )
    p_verify.set_defaults(func=_guarded(cmd_verify))

    p_head = audit_sub.add_parser("head", help="print the last record as SEQ:HASH")
    p_head.add_argument("--data", type=Path, default=None, help=data_help)
    p_head.add_argument("--store", default=None, metavar="URL", help=store_help)
    p_head.set_defaults(func=_guarded(cmd_head))

    p_export = audit_sub.add_parser("export", help="print records as JSON lines")
    p_export.add_argument("--data", type=Path, default=None, help=data_help)
    p_export.add_argument("--store", default=None, metavar="URL", help=store_help)
    p_export.add_argument("--after", default="0", metavar="SEQ", help="only records after this seq")
    p_export.set_defaults(func=_guarded(cmd_export))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit commands alone (``python -m allowhelp.broker.cli.audit audit ...``).

    The installed entry point is ``allowhelp-broker``; this one needs none of
    the broker's dependencies, for checking a copied data folder elsewhere.
    """
    parser = argparse.ArgumentParser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True)
    add_audit_commands(sub, lambda: Path(os.environ.get("ALLOWHELP_DATA", ".")))
    args = parser.parse_args(argv)
    func: Handler = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
