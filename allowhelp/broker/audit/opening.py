"""Opening the audit log where the settings put it (the data folder's SQLite file,
or the PostgreSQL database broker nodes share: imported only then, psycopg), with
the sinks ``serve`` uses: the syslog forwarder and the anchor file.

Every writer of the chain opens it through :func:`open_with_sinks`: ``serve``
(``node/datafolder.py``) and the command line (``user add``, ``token create``,
``backup``: :func:`open_for_cli`; ``restore``: ``audit/restoring.py``). So each
record reaches the syslog collector whoever wrote it (a collector sees no gap in
``seq``), and the anchor file's last head covers the command line's records too.
``serve`` remembers its sinks (``--syslog``, ``--audit-anchors``,
``--audit-anchor-every``) in ``audit.sinks.json`` in the data folder; the command
line takes them from there (the defaults when no broker has run on the folder yet).

An anchor file that is missing, or holds no head, while the chain has records
is never made again silently: that is what deleting it after a rewrite of the
database looks like. The opener warns on stderr, chains ``audit.anchors.missing``
(AH1908; forwarded to syslog like any record) naming the file and the head found,
and starts the file again with that record's head, marked ``restarted``:
``audit verify --anchors`` then says the file vouches only from there on.
A fresh chain (no record yet) stays quiet: the file is begun with a first line
that says so (``BEGUN``), so a broker stopped without an anchor yet (killed, or
the command line writing while a fresh ``serve`` runs) is no alarm either; an
empty file made beforehand (by an admin setting its owner) is begun the same way.
A file that goes away while the chain is open is made again by the sink itself,
marked ``restarted`` (audit/anchor.py).

``restore`` writes ``broker.restored`` through the sinks of the installation it
restores (the ``audit.sinks.json`` kept in its new folder, read by
:func:`cli_sinks` before anything is unpacked): ``audit/restoring.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.anchor import RESTARTED, anchor_file_state
from allowhelp.broker.audit.anchor_sink import AnchorSink
from allowhelp.broker.audit.format import AuditPlace
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.options import AuditOptions
from allowhelp.broker.audit.syslog import SyslogForwarder
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.certs.sshkeys import write_file_atomic

log = logging.getLogger(__name__)

SINKS_FILE = "audit.sinks.json"
ANCHORS_MISSING = "audit.anchors.missing"
ANCHORS_BEGUN = "audit.anchors.begun"  # a node's first start on a shared chain
CLI_ACTOR = "system:cli"
NO_HEAD = ("missing", "empty")  # anchor file states told (and made again) on a chain with records


def open_audit(
    place: AuditPlace,
    *,
    forwarder: SyslogForwarder | None = None,
    anchors: AnchorSink | None = None,
) -> AuditLog:
    """The log in the data folder's SQLite file, or in the shared PostgreSQL database."""
    if isinstance(place, PostgresUrl):
        from allowhelp.broker.audit.pg_chain import PgAuditLog  # noqa: PLC0415 - psycopg

        return PgAuditLog.open_url(place, forwarder=forwarder, anchors=anchors)
    return AuditLog.open(place, forwarder=forwarder, anchors=anchors)


@dataclass(frozen=True)
class AuditSinks:
    """Where records and heads go besides the chain. ``options`` None: no anchors."""

    syslog_url: str | None = None
    options: AuditOptions | None = None

    def save(self, data_dir: Path) -> None:
        """Remember these for the command line; a failure is logged, never fatal."""
        options = self.options
        anchors = None
        if options is not None:
            path = str(options.anchors) if options.anchors is not None else None
            anchors = {"path": path, "every": options.anchor_every}  # path None: DATA's
        text = json.dumps({"syslog": self.syslog_url, "anchors": anchors}, indent=2) + "\n"
        try:
            write_file_atomic(data_dir / SINKS_FILE, text.encode())
        except OSError as exc:
            log.warning(
                "%s not written (%s): the command line's audit records may miss syslog "
                "and the anchor file",
                data_dir / SINKS_FILE,
                exc.strerror or exc,
            )

    @classmethod
    def remembered(cls, data_dir: Path) -> AuditSinks:
        """What ``serve`` last ran with on ``data_dir``; its defaults if it never ran."""
        path = data_dir / SINKS_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            anchors = raw["anchors"]
            options = None
            if anchors is not None:
                where = anchors["path"]
                options = AuditOptions(
                    anchors=Path(str(where)) if where is not None else None,
                    anchor_every=int(anchors["every"]),
                )
            syslog = raw["syslog"]
            return cls(str(syslog) if syslog is not None else None, options)
        except FileNotFoundError:
            return cls(None, AuditOptions())
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is damaged ({exc}); start the broker once to write it again"
            ) from exc


@dataclass(frozen=True)
class SinkedAudit:
    """The log and its forwarder (the caller's to close, after the log)."""

    audit: AuditLog
    forwarder: SyslogForwarder | None

    def close(self) -> None:
        """Close the log (its stop anchor goes out), then flush syslog."""
        try:
            self.audit.close()
        finally:
            if self.forwarder is not None:
                self.forwarder.close()


def open_with_sinks(
    place: AuditPlace,
    data_dir: Path,
    sinks: AuditSinks,
    *,
    actor: str,
    remember: bool = False,
    check: bool = True,
    joining: bool = False,
) -> SinkedAudit:
    """Open the log with syslog and anchors as ``sinks`` say; tell and chain a
    missing anchor file (``actor`` writes that record; not when ``check`` is False).
    ``remember``: ``serve``'s own sinks, saved for the command line. ``joining``: a
    node's first start on a shared chain (its missing file is no alarm: begun)."""
    forwarder = SyslogForwarder.from_url(sinks.syslog_url) if sinks.syslog_url else None
    options = sinks.options
    anchors = None
    if options is not None:  # the head to the anchor file and syslog (audit/anchor.py)
        anchors = AnchorSink(options.anchor_file(data_dir), options.anchor_every, forwarder)
    try:
        audit = open_audit(place, forwarder=forwarder, anchors=anchors)
    except BaseException:
        if forwarder is not None:
            forwarder.close()
        raise
    audit.change_actor = actor  # a change of the anchor file found later is chained so
    opened = SinkedAudit(audit, forwarder)
    try:
        if anchors is not None and check:
            _check_anchor_file(audit, anchors, actor, joining=joining)
    except BaseException:
        with contextlib.suppress(Exception):
            opened.close()
        raise
    if remember:
        sinks.save(data_dir)
    return opened


def open_for_cli(place: AuditPlace, data_dir: Path) -> SinkedAudit:
    """The command line's writer: the sinks ``serve`` remembered in ``data_dir``."""
    return open_with_sinks(place, data_dir, cli_sinks(place, data_dir), actor=CLI_ACTOR)


def cli_sinks(place: AuditPlace, data_dir: Path) -> AuditSinks:
    """What ``serve`` remembered in ``data_dir``. A shared database with a folder no
    node has served from (an admin's own machine) gets none: that folder's anchor
    file would vouch for nothing."""
    if isinstance(place, PostgresUrl) and not (data_dir / SINKS_FILE).exists():
        return AuditSinks()
    return AuditSinks.remembered(data_dir)


def _check_anchor_file(
    audit: AuditLog, anchors: AnchorSink, actor: str, *, joining: bool = False
) -> None:
    """A chain with records and an anchor file without a head: said and chained,
    then the file is started again with the head of that record. A node's first
    start on a shared chain (``joining``) with no file yet: begun so, told quietly."""
    path = anchors.path
    if path is None:
        return
    seq, digest = audit.head()
    found = anchor_file_state(path)
    if found in ("ok", "begun"):
        anchors.found()  # appended to from now on: gone later, it is made again restarted
    if seq == 0:  # a fresh install: nothing to vouch for yet, nothing to tell
        if found in NO_HEAD:  # empty: made beforehand by an admin, e.g. to set its owner
            anchors.begin()  # so that no head in it later is no alarm
        return
    if found not in NO_HEAD:
        return  # "unreadable" is told by the start-up check (audit/integrity.py)
    if joining and found == "missing":
        _begin_for_new_node(audit, anchors, actor, seq, digest)
        return
    log.warning(
        "AUDIT ANCHOR FILE %s is %s while the chain holds %d records: it is made again, "
        "starting at the %s record chained now; its heads vouch only from there on",
        path,
        "missing" if found == "missing" else "empty (no head in it)",
        seq,
        ANCHORS_MISSING,
    )
    record = audit.append(
        ANCHORS_MISSING,
        actor=actor,
        target=str(path),
        details={"found": found, "head": f"{seq}:{digest}"},
    )
    anchors.anchor(record.seq, record.hash, RESTARTED)


def _begin_for_new_node(
    audit: AuditLog, anchors: AnchorSink, actor: str, seq: int, digest: str
) -> None:
    """A node joining a shared chain: its own anchor file begins here, marked
    ``restarted`` (true: it vouches only from there on), on the record as
    ``audit.anchors.begun``, not as the alarm a deleted file is."""
    log.info(
        "this node's audit anchor file %s begins at record %d of the shared chain (a node's "
        "first start: %s); its heads vouch from there on",
        anchors.path,
        seq + 1,
        ANCHORS_BEGUN,
    )
    record = audit.append(
        ANCHORS_BEGUN,
        actor=actor,
        target=str(anchors.path),
        details={"why": "new node", "head": f"{seq}:{digest}"},
    )
    anchors.anchor(record.seq, record.hash, RESTARTED)
