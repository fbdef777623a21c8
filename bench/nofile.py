"""Raising RLIMIT_NOFILE, apart from ``bench.common``: ``bench.launch`` starts the
product's processes with it, and what ``bench.common`` imports (importlib.metadata,
statistics, platform, ssl) would otherwise count in the agent's measured RSS."""

from __future__ import annotations

import resource

NOFILE = 400_000


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed and return the soft limit now in force.

    Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit
    goes up to the hard one and no further."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (limit, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft
