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

The sink that writes them, and notices a file deleted, replaced or truncated
while the chain is open, is ``audit/anchor_sink.py``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
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
from allowhelp.broker.errors import AuditCorrupt

if TYPE_CHECKING:
    pass

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
Change = Literal["deleted", "replaced", "truncated"]  # found while the chain is open
# The first line of a file begun on an empty chain: no head yet is no alarm (audit/opening.py).
BEGUN = "# allowhelp audit anchors, begun on an empty chain"


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    line: int  # where it was found, for the message
    why: str = ""  # every, stop, restarted; '' when the line does not say
    syslog: bool = False  # an AH1905 line (a collector's file), not an anchor file's


def parse_anchors(lines: Iterable[str]) -> list[Anchor]:
    """Heads in an anchor file or in a syslog collector's file; other lines are skipped
    (a record's own syslog line, or a technician's words, never count as a head)."""
    found: list[Anchor] = []
    for number, line in enumerate(lines, start=1):
        match = _FILE_LINE.match(line)
        syslog = match is None
        match = match or _SYSLOG_LINE.search(line)
        if match is not None:
            seq, why = int(match.group(1)), match.group(3) or ""
            found.append(Anchor(seq, match.group(2), number, why, syslog))
    return found


def restarted_at(anchors: list[Anchor]) -> int | None:
    """The seq from which these heads vouch when their file was made again, or went
    on after it was replaced or cut short (its first head says ``restarted``, or in
    an anchor file any head does: the last such one counts, as a file cut short keeps
    the heads before it): they cannot vouch for what the records up to it were before
    then. None for a file that holds its history (a collector's, whose ``restarted``
    lines came after the heads it kept)."""
    if not anchors:
        return None
    first = min(anchor.seq for anchor in anchors)
    marked = [a.seq for a in anchors if a.why == RESTARTED and (a.seq == first or not a.syslog)]
    return max(marked) if marked else None


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
