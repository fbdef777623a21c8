"""The ``serve`` options of the audit log: anchors, the start-up check, coalescing.

Kept here, next to what they tune, so ``cli/main.py`` and ``settings.py`` only
pass them through. docs/audit.md explains each.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.anchor import ANCHOR_FILE, DEFAULT_EVERY

DEFAULT_WINDOW = 600.0  # seconds: one summary per flapping agent / refusing address
DEFAULT_BURST = 2  # connects per agent per window chained one by one (a reboot: 1)


@dataclass(frozen=True)
class AuditOptions:
    anchors: Path | None = None  # None: audit.anchors in the data folder
    anchor_every: int = DEFAULT_EVERY
    refuse_broken: bool = False
    window: float = DEFAULT_WINDOW
    burst: int = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not 1 <= self.anchor_every <= 1_000_000:
            raise ValueError("--audit-anchor-every must be between 1 and 1000000 records")
        if not 1.0 <= self.window <= 86_400.0:
            raise ValueError("--audit-coalesce must be between 1 and 86400 seconds")
        if not 1 <= self.burst <= 100:
            raise ValueError("the connect burst must be between 1 and 100")

    def anchor_file(self, data_dir: Path) -> Path:
        return self.anchors if self.anchors is not None else data_dir / ANCHOR_FILE

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AuditOptions:
        anchors = getattr(args, "audit_anchors", None)
        return cls(
            anchors=Path(anchors).expanduser().resolve() if anchors else None,
            anchor_every=int(getattr(args, "audit_anchor_every", DEFAULT_EVERY)),
            refuse_broken=bool(getattr(args, "refuse_broken_audit", False)),
            window=float(getattr(args, "audit_coalesce", DEFAULT_WINDOW)),
        )


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The audit flags of ``allowhelp-broker serve``."""
    serve.add_argument(
        "--audit-anchors",
        default=None,
        metavar="PATH",
        help="append the audit head (SEQ:HASH) to this file every --audit-anchor-every "
        f"records and at stop; put it where the broker host cannot rewrite it "
        f"(default: {ANCHOR_FILE} in the data folder)",
    )
    serve.add_argument(
        "--audit-anchor-every",
        type=int,
        default=DEFAULT_EVERY,
        metavar="N",
        help=f"records between two anchored heads, also sent to --syslog (default {DEFAULT_EVERY})",
    )
    serve.add_argument(
        "--refuse-broken-audit",
        action="store_true",
        help="check the whole audit chain before serving and refuse to start when it is "
        "broken (default: check the tail, start, and report a break loudly)",
    )
    serve.add_argument(
        "--audit-coalesce",
        type=float,
        default=DEFAULT_WINDOW,
        metavar="SECONDS",
        help="a flapping agent's connects, and failed tunnel handshakes per address, are "
        f"summed up in one audit record per this many seconds (default {DEFAULT_WINDOW:g})",
    )
