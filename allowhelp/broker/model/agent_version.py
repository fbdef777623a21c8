"""Which agent versions this broker works with, and how the console flags the rest.

``MIN_AGENT_VERSION`` is the one place that says how old an agent may be: the
oldest release whose control messages, enrolment and channels this broker
still speaks (docs/design.md, "Agent versions"). An agent older than
that still connects, so the help desk sees it and can update it, but the
console marks it *unsupported*; one older than the broker itself is marked
*outdated*. A version that is not a version (the agent's own words) is
*unknown*, and flagged too. Local labels (``+deb1``) do not count: a
rebuild of the same release is that release.
"""

from __future__ import annotations

from typing import Literal

from packaging.version import InvalidVersion, Version

from allowhelp import __version__

MIN_AGENT_VERSION = "0.1.0"

VersionStatus = Literal["current", "outdated", "unsupported", "unknown"]


def agent_version_status(
    reported: str, *, broker: str = __version__, minimum: str = MIN_AGENT_VERSION
) -> VersionStatus:
    """How an agent reporting ``reported`` compares with this broker."""
    try:
        agent = _public(reported)
    except InvalidVersion:
        return "unknown"
    if agent < _public(minimum):
        return "unsupported"
    if agent < _public(broker):
        return "outdated"
    return "current"


def _public(text: str) -> Version:
    return Version(Version(text).public)
