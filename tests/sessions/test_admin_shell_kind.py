"""The admin-shell kind at the broker, with a per-user agent: refused at once, clearly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Agent, Broker, Desk, broker_cli, running_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    options = ("--consent-timeout", "30")
    with running_fleet(tmp_path_factory.mktemp("adminkind"), broker_args=options) as (
        _,
        broker,
        agent,
    ):
        yield broker, agent


def test_a_per_user_agent_offers_no_admin_shell(fleet: tuple[Broker, Agent]) -> None:
    broker, agent = fleet
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        started = time.monotonic()
        answer = desk.request(agent.agent_id, "admin-shell")
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"] == "admin_shell_unsupported"
        assert "machine service" in answer.json()["message"]
        assert time.monotonic() - started < 10  # not after the 30 s consent timeout
        unknown = desk.request(agent.agent_id, "root-shell")
        assert unknown.status_code == 400
        assert "admin-shell" in unknown.json()["message"]
    finally:
        desk.close()
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    ended = [r for r in records if r["type"] == "session.ended"][-1]
    assert ended["details"]["kind"] == "admin-shell"
    assert ended["details"]["end_reason"] == "unsupported"


def test_a_per_user_agent_lists_its_user_as_signed_in(fleet: tuple[Broker, Agent]) -> None:
    broker, agent = fleet
    row = next(a for a in broker.agents(ADMIN, ADMIN_PW) if a["id"] == agent.agent_id)
    assert row["system"] is False
    assert row["signed_in"] == row["user"] and row["user"]
