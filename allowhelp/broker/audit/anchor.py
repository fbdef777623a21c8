"""Head anchors: copies of the chain's head (``SEQ:HASH``) kept outside the database.

The hash chain proves that nobody edited a record *without recomputing the
hashes after it*. Whoever can write ``audit.sqlite3`` can also recompute them
(the algorithm is public on purpose), so a full rewrite still verifies. What
catches that is a head saved where the rewriter cannot write: every
``--audit-anchor-every`` records and at stop the broker appends the head

* to an anchor file (``--audit-anchors PATH``, default ``audit.anchors`` in
  the data folder: an append-only text file, one ``SEQ:HASH TS WHY`` per
  line; point it at another machine's mount to keep it off-box), and
* to syslog (``--syslog``), as an ``AH1905`` line carrying the same head.

``allowhelp-broker audit verify --anchors FILE`` checks every head in either
kind of file against the database, and the broker checks its anchor file at
every start. Anchoring is best effort, like syslog: a failed anchor write is
logged and counted, never a reason to refuse an action.

Once the file is there (found at open, begun, or written to), heads are appended
to it without creating it: a file that went away while the broker runs is made
again only with the head being written marked ``restarted`` (so ``audit verify
--anchors`` says it vouches only from there on), an error in the log naming it,
and that head's syslog line sent as a warning. No record is chained from here
(the sink runs inside the log's commit); the ``restarted`` mark is the evidence.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from allowhelp.broker.audit.chain import (
    GENESIS_HASH,
    LAST_SQL,
    AuditPlace,
    ChainReader,
    VerifyResult,
    hash_at,
    open_ro,
)
from allowhelp.broker.audit.codes import ANCHOR_MSGID
from allowhelp.broker.audit.status import AnchorState, utc_now
from allowhelp.broker.errors import AuditCorrupt

if TYPE_CHECKING:
    from allowhelp.broker.audit.syslog import SyslogForwarder

log = logging.getLogger(__name__)

ANCHOR_FILE = "audit.anchors"
DEFAULT_EVERY = 100
# An anchor file line: "SEQ:HASH" first. A syslog anchor line (any collector's
# prefix before it): the AH1905 MSGID, then seq="…" hash="…" in its SD element.
# The WHY (``every``, ``stop``, ``restarted``) is kept: a file started again
# (``RESTARTED``) vouches only from its first head on.
_FILE_LINE = re.compile(r"([0-9]+):([0-9a-f]{64})(?:$|\s+(?:\S+\s+([a-z_-]+))?)")
_SYSLOG_LINE = re.compile(
    rf" {ANCHOR_MSGID} \[allowhelp@32473 [^\]]*?seq=\"([0-9]+)\" hash=\"([0-9a-f]{{64}})\""
    r"(?: why=\"([a-z_-]*)\")?"
)
RESTARTED = "restarted"  # the WHY of the first head of an anchor file made again
_GONE = "the anchor file went away"  # _append's answer when a file once there is gone
# The first line of a file begun on an empty chain: no head yet is no alarm (audit/opening.py).
BEGUN = "# allowhelp audit anchors, begun on an empty chain"


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    line: int  # where it was found, for the message
    why: str = ""  # every, stop, restarted; '' when the line does not say


def parse_anchors(lines: Iterable[str]) -> list[Anchor]:
    """Heads in an anchor file or in a syslog collector's file; other lines are skipped
    (a record's own syslog line, or a technician's words, never count as a head)."""
    found: list[Anchor] = []
    for number, line in enumerate(lines, start=1):
        match = _FILE_LINE.match(line) or _SYSLOG_LINE.search(line)
        if match is not None:
            found.append(Anchor(int(match.group(1)), match.group(2), number, match.group(3) or ""))
    return found


def restarted_at(anchors: list[Anchor]) -> int | None:
    """The seq where these heads begin when their file was made again after it went
    missing (its first head says ``restarted``): they cannot vouch for what the
    records up to it were before then. None for a file that holds its history."""
    if not anchors:
        return None
    first = min(anchor.seq for anchor in anchors)
    if any(a.why == RESTARTED for a in anchors if a.seq == first):
        return first
    return None


FileState = Literal["ok", "begun", "missing", "empty", "unreadable"]


def anchor_file_state(path: Path) -> FileState:
    """``ok`` (heads in it), ``begun`` (no head yet, begun on an empty chain),
    ``missing``, ``empty`` (neither a head nor that first line), ``unreadable``."""
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    if parse_anchors(lines):
        return "ok"
    return "begun" if lines and lines[0].startswith(BEGUN) else "empty"


def read_anchors(path: Path) -> list[Anchor]:
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        return parse_anchors(handle)


@dataclass(frozen=True)
class AnchorCheck:
    """``good_seq``/``good_hash``: the highest anchored head that matches, with
    every anchor below it matching too (0 and genesis when none). When not
    ``ok``, ``first_bad_seq`` is the first record no anchor vouches for."""

    ok: bool
    checked: int
    good_seq: int
    good_hash: str
    first_bad_seq: int | None
    problem: str


def check_anchors(
    path: AuditPlace, anchors: list[Anchor], source: str = "the anchor file"
) -> AnchorCheck:
    """Compare each anchored head with the database, read-only (one look-up each)."""
    conn = open_ro(path)
    try:
        return _compare(conn, anchors, source)
    except sqlite3.DatabaseError as exc:
        raise AuditCorrupt(f"{path} cannot be read: {exc}") from exc
    finally:
        conn.close()


def _compare(conn: ChainReader, anchors: list[Anchor], source: str) -> AnchorCheck:
    last = conn.execute(LAST_SQL).fetchone()
    head = int(last[0]) if last else 0
    good_seq, good_hash, checked = 0, GENESIS_HASH, 0
    for anchor in sorted(anchors, key=lambda a: (a.seq, a.line)):
        checked += 1
        stored = hash_at(conn, anchor.seq) if anchor.seq > 0 else GENESIS_HASH
        if stored == anchor.hash:
            good_seq, good_hash = anchor.seq, anchor.hash
            continue
        where = f"line {anchor.line} of {source}"
        if stored is None and anchor.seq > head:
            problem = (
                f"the log was truncated: head {anchor.seq} anchored on {where} is not present "
                f"(the log ends at {head})"
            )
        elif stored is None:
            problem = f"record {anchor.seq} is missing (its head is anchored on {where})"
        else:
            problem = (
                f"record {anchor.seq} differs from its head anchored on {where}: the records "
                f"after {good_seq} were rewritten or replaced"
            )
        return AnchorCheck(False, checked, good_seq, good_hash, good_seq + 1, problem)
    return AnchorCheck(True, checked, good_seq, good_hash, None, "")


def combine(walk: VerifyResult, anchors: AnchorCheck | None) -> VerifyResult:
    """One verdict from a walk and an anchor check: the earlier problem wins."""
    if anchors is None or anchors.ok:
        return walk
    bad = anchors.first_bad_seq or 1
    if not walk.ok and walk.first_bad_seq is not None and walk.first_bad_seq <= bad:
        return walk
    return VerifyResult(False, bad - 1, bad - 1, bad, anchors.problem, anchors.good_hash)


class AnchorSink:
    """Writes heads to the anchor file and to syslog; called by the audit log
    under its lock, right after a commit, so heads go out in seq order."""

    def __init__(
        self, path: Path | None, every: int, forwarder: SyslogForwarder | None = None
    ) -> None:
        if every < 1:
            raise ValueError("heads are anchored every 1 or more records")
        self.path = path
        self.every = every
        self._forwarder = forwarder
        self._last_seq = 0  # the head anchored last, or found at open
        self._written_seq = 0  # the head last written out (the stop anchor skips a repeat)
        # The file is there (found at open, begun or written): it is never created again
        # silently, a write that finds it gone makes it again marked ``restarted``.
        self._established = False
        self._lock = threading.Lock()
        self._state = AnchorState(
            str(path) if path is not None else None, every, forwarder is not None
        )

    @property
    def state(self) -> AnchorState:
        return self._state

    def start_at(self, seq: int) -> None:
        """The head found at open: the next anchor comes ``every`` records later."""
        self._last_seq = seq

    def found(self) -> None:
        """The file was there at open (a head in it, or begun): from now on it is
        appended to, never created (a file gone later is made again ``restarted``)."""
        self._established = True

    def begin(self) -> None:
        """Start the file on an empty chain, before any head: a later start that
        finds it without a head knows it was not deleted. Never raises."""
        if self.path is not None:
            error = self._append(f"{BEGUN} at {utc_now()}\n")
            if error:
                log.error("audit anchor file %s not begun: %s", self.path, error)

    def after_commit(self, seq: int, digest: str) -> None:
        if seq - self._last_seq >= self.every:
            self.anchor(seq, digest, "every")

    def at_stop(self, seq: int, digest: str) -> None:
        if seq > 0 and seq != self._written_seq:
            self.anchor(seq, digest, "stop")

    def anchor(self, seq: int, digest: str, why: str) -> None:
        """Never raises: a copy that cannot be written is logged and counted."""
        with self._lock:
            self._last_seq = self._written_seq = seq
            now = utc_now()
            error = ""
            if self.path is not None:
                error = self._append(f"{seq}:{digest} {now} {why}\n")
                if error == _GONE:  # not made again silently: marked, told
                    error = self._append(f"{seq}:{digest} {now} {RESTARTED}\n", create=True)
                    if not error:  # else its folder is gone too: a failure, counted below
                        why = RESTARTED
                        log.error(
                            "AUDIT ANCHOR FILE %s went away while the broker ran: it is made "
                            "again, starting at head %d marked %s; its heads vouch only "
                            "from there on",
                            self.path,
                            seq,
                            RESTARTED,
                        )
            if self._forwarder is not None:
                try:
                    self._forwarder.submit_anchor(seq, digest, now, why)
                except Exception:
                    log.warning("the audit head %d could not be queued for syslog", seq)
            state = self._state
            failures = state.failures + (1 if error else 0)
            if error and (failures == 1 or failures % 100 == 0):
                log.error(
                    "audit head %d not anchored in %s (%d so far): %s",
                    seq,
                    self.path,
                    failures,
                    error,
                )
            self._state = AnchorState(
                state.file,
                state.every,
                state.syslog,
                last_seq=seq if not error else state.last_seq,
                last_hash=digest if not error else state.last_hash,
                last_at=now if not error else state.last_at,
                failures=failures,
                last_error=error or state.last_error,
            )

    def _append(self, line: str, *, create: bool = False) -> str:
        """Append and fsync one line; the reason in words when it failed, else ''.
        A file once there is not created again: :data:`_GONE` when it went away."""
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND
        if create or not self._established:
            flags |= os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError as exc:
            if flags & os.O_CREAT:
                return exc.strerror or str(exc)  # its folder is gone: told as a failure
            return _GONE
        except OSError as exc:
            return exc.strerror or str(exc)
        self._established = True
        try:
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""
