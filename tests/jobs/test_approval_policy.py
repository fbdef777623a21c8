"""Who may change how many admins agree to a job (``jobs/policy.py``, no I/O)."""

from __future__ import annotations

import pytest

from allowhelp.broker.jobs.policy import LOWERING_FOR, Lowering, admins_to_agree, next_step

NOW = 1_800_000_000.0


def test_raising_takes_one_admin_and_lowering_two() -> None:
    assert next_step(1, 2, None, "ann", NOW) == "set"
    assert next_step(2, 2, None, "ann", NOW) == "set"
    assert next_step(2, 1, None, "ann", NOW) == "ask"
    asked = Lowering("ann", NOW - 60)
    assert next_step(2, 1, asked, "ann", NOW) == "ask"  # the same admin again
    assert next_step(2, 1, asked, "bob", NOW) == "set"  # a second admin
    stale = Lowering("ann", NOW - LOWERING_FOR)
    assert next_step(2, 1, stale, "bob", NOW) == "ask"  # a request that stood too long
    future = Lowering("ann", NOW + 3600)
    assert next_step(2, 1, future, "bob", NOW) == "ask"  # a clock gone wrong agrees to nothing


@pytest.mark.parametrize(
    "text",
    [None, "", "null", "[]", "{}", '{"by": "", "at": 1}', '{"by": "ann", "at": "1"}', "{bad"],
)
def test_anything_but_a_request_is_none(text: str | None) -> None:
    assert Lowering.parse(text) is None


def test_a_request_reads_back() -> None:
    asked = Lowering("ann", NOW)
    assert Lowering.parse(asked.to_text()) == asked


def test_an_unknown_stored_policy_is_two_admins() -> None:
    assert [admins_to_agree(v) for v in (None, "1", "2", "3", "")] == [1, 1, 2, 2, 2]
