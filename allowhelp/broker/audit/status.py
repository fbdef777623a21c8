"""What the broker knows about its own chain, for the console's audit page.

Filled by :mod:`allowhelp.broker.audit.integrity` (the start-up check and the
full check after it) and by :mod:`allowhelp.broker.audit.anchor` (the last head
anchored); read by ``GET /api/v1/audit/verify``. Plain data: no I/O here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

Scope = Literal["full", "tail"]
FullState = Literal["not needed", "running", "done", "failed"]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ChainCheck:
    """One check of the chain: which records it walked, and what it found.

    ``scope`` is ``full`` (from the first record) or ``tail`` (from the last
    head that still matches its anchor, so the records before it are vouched
    for by the anchors only until the full check has run). ``record_seq`` is
    the ``audit.chain_broken`` record written about a break (None when none
    was, or could be, written).
    """

    ok: bool
    scope: Scope
    from_seq: int
    last_seq: int
    first_bad_seq: int | None
    problem: str
    anchors_checked: int
    seconds: float
    at: str = field(default_factory=utc_now)
    record_seq: int | None = None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AnchorState:
    """Where heads are anchored and the last one written."""

    file: str | None
    every: int
    syslog: bool
    last_seq: int | None = None
    last_hash: str | None = None
    last_at: str | None = None
    failures: int = 0
    last_error: str = ""

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class ChainState:
    """Mutable, owned by the broker's :class:`~allowhelp.broker.audit.log.AuditLog`."""

    startup: ChainCheck | None = None
    full: ChainCheck | None = None
    full_state: FullState = "not needed"
    full_error: str = ""

    @property
    def broken(self) -> ChainCheck | None:
        """The check that found the chain broken, if any did since the start."""
        for check in (self.startup, self.full):
            if check is not None and not check.ok:
                return check
        return None

    def to_json(self) -> dict[str, object]:
        broken = self.broken
        return {
            "startup": self.startup.to_json() if self.startup else None,
            "full": self.full.to_json() if self.full else None,
            "full_state": self.full_state,
            "full_error": self.full_error,
            "started_broken": self.startup is not None and not self.startup.ok,
            "broken": broken.to_json() if broken else None,
        }
