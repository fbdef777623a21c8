"""How many admins must agree to a fleet job, and how that may change (sans I/O).

``require_approval`` is 1 (the admin who makes a job) or 2 (and a second). Raising
it takes one admin. Lowering it from 2 to 1 takes two: the first admin's request
stands for ``LOWERING_FOR`` (on the record as ``auth.policy.asked``, shown by
``GET /api/v1/policy``), and the change is made when another admin asks the same
while it stands. Else one admin could lower it, make a job nobody approves, and raise
it again (a review of fleet jobs found that), and two-admin approval would be one
admin's word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

REQUIRE_APPROVAL = "require_approval"  # broker policy: admins who must agree, 1 or 2
LOWERING = "require_approval_lowering"  # a first admin's request to lower it, standing
LOWERING_FOR = 24 * 3600.0  # seconds a request to lower it waits for a second admin


def admins_to_agree(stored: str | None) -> int:
    """The policy as stored: unset or "1" is one admin; anything else (only "2" is ever
    written) two, so a value the broker does not know never lets a job through alone."""
    return 1 if stored in (None, "1") else 2


@dataclass(frozen=True)
class Lowering:
    """An admin asked to lower ``require_approval`` at ``at`` (Unix seconds)."""

    by: str
    at: float

    def to_text(self) -> str:
        return json.dumps({"by": self.by, "at": self.at})

    @classmethod
    def parse(cls, text: str | None) -> Lowering | None:
        """The stored request; None for none, or for anything not one (deny: ask again)."""
        try:
            raw = json.loads(text or "null")
            by, at = raw["by"], raw["at"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(by, str) or not by or type(at) not in (int, float):
            return None
        return cls(by, float(at))

    def standing(self, now: float) -> bool:
        return 0 <= now - self.at < LOWERING_FOR


def next_step(
    current: int, wanted: int, lowering: Lowering | None, username: str, now: float
) -> Literal["set", "ask"]:
    """ "set": make ``wanted`` the policy now; "ask": stand as the first admin's request."""
    if wanted >= current:
        return "set"
    if lowering is not None and lowering.standing(now) and lowering.by != username:
        return "set"
    return "ask"
