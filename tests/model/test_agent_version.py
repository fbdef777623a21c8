"""How an agent's reported version compares with the broker's (pure logic)."""

from __future__ import annotations

import pytest
from packaging.version import Version

from allowhelp import __version__
from allowhelp.broker.model.agent_version import MIN_AGENT_VERSION, agent_version_status


@pytest.mark.parametrize(
    ("reported", "status"),
    [
        ("2.0.0", "current"),  # the broker's own
        ("2.1.0", "current"),  # newer agents speak down to the broker
        ("2.0.0+deb1", "current"),  # a rebuild of the same release
        ("2.0.0rc1", "outdated"),  # a pre-release comes before its release
        ("1.10.0", "outdated"),  # compared as versions, not as text ("1.10" > "1.9")
        ("1.9.0", "outdated"),
        ("1.5", "outdated"),  # the minimum itself is accepted
        ("1.4.9", "unsupported"),
        ("0.9", "unsupported"),
        ("", "unknown"),
        ("banana", "unknown"),
        ("<script>", "unknown"),
        ("1.0.0.dev0 with spaces", "unknown"),
    ],
)
def test_status_against_a_broker_and_a_minimum(reported: str, status: str) -> None:
    assert agent_version_status(reported, broker="2.0.0", minimum="1.5") == status


def test_the_minimum_is_a_version_no_newer_than_the_broker() -> None:
    assert Version(MIN_AGENT_VERSION) <= Version(__version__)
    assert agent_version_status(__version__) == "current"
    assert agent_version_status(MIN_AGENT_VERSION) in ("current", "outdated")
