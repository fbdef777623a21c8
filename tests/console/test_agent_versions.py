"""The machines list says which agents are behind the broker, from what real
agents report in their ``Hello``.

The broker runs as the next minor release (its ``allowhelp.__version__`` set
before anything imports it) and the agents as this tree's version, 0.0.0, a
string that is no version and the broker's own: real processes, real tunnels,
the real API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from packaging.version import Version

from allowhelp import __version__
from allowhelp.broker.model.agent_version import MIN_AGENT_VERSION
from harness import ADMIN, ADMIN_PW, PY, Agent, Broker, Fleet, staffed_broker, wait_for

THIS = Version(__version__)
BROKER_VERSION = f"{THIS.major}.{THIS.minor + 1}.0"
ANCIENT = "0.0.0"


def as_version(version: str, module: str) -> list[str]:
    """Run ``module``'s ``main`` as if allowhelp were ``version``."""
    code = (
        "import sys, allowhelp; "
        f"allowhelp.__version__ = {version!r}; "
        f"from {module} import main; sys.exit(main())"
    )
    return [PY, "-c", code]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("versions")
    with staffed_broker(root) as fleet:
        fleet.brokers[0].stop()
        newer = fleet.broker(
            "newer", program=as_version(BROKER_VERSION, "allowhelp.broker.cli.main")
        )
        newer.data = fleet.brokers[0].data  # the same data folder, users included
        newer.start()
        yield fleet


def start_agent(fleet: Fleet, name: str, version: str | None) -> Agent:
    broker = fleet.brokers[-1]
    agent = Agent(fleet.root / name)
    if version is not None:
        agent.program = as_version(version, "allowhelp.agent.cli")
    fleet.agents.append(agent)
    enrolled = agent.enroll(broker.token())
    assert enrolled.returncode == 0, enrolled.stderr
    agent.start("--reconnect-cap", "2")
    return agent


def row_of(broker: Broker, agent: Agent, version: str) -> dict[str, Any]:
    """The agent's row once it is online and its Hello reported ``version``."""

    def reported() -> dict[str, Any] | None:
        for row in broker.agents(ADMIN, ADMIN_PW):
            if row["id"] == agent.agent_id and row["online"] and row["version"] == version:
                return row
        return None

    found: dict[str, Any] = wait_for(reported, 20, f"{agent.config.name} to report {version}")
    return found


def test_the_versions_used_here_fall_where_they_should() -> None:
    assert Version(ANCIENT) < Version(MIN_AGENT_VERSION) <= THIS < Version(BROKER_VERSION)


@pytest.mark.parametrize(
    ("name", "version", "shown", "status"),
    [
        ("same-tree", None, __version__, "outdated"),
        ("ancient", ANCIENT, ANCIENT, "unsupported"),
        ("hostile", "<b>not a version", "<b>not a version", "unknown"),
        ("newest", BROKER_VERSION, BROKER_VERSION, "current"),
    ],
)
def test_each_agent_is_flagged_by_what_it_reports(
    fleet: Fleet, name: str, version: str | None, shown: str, status: str
) -> None:
    agent = start_agent(fleet, name, version)
    row = row_of(fleet.brokers[-1], agent, shown)
    assert row["version_status"] == status


def test_a_restarted_agent_that_was_updated_is_flagged_no_more(fleet: Fleet) -> None:
    agent = start_agent(fleet, "updated", ANCIENT)
    broker = fleet.brokers[-1]
    assert row_of(broker, agent, ANCIENT)["version_status"] == "unsupported"
    agent.stop()
    agent.program = as_version(BROKER_VERSION, "allowhelp.agent.cli")
    agent.start("--reconnect-cap", "2")
    assert row_of(broker, agent, BROKER_VERSION)["version_status"] == "current"
