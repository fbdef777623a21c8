"""An invitee's page reloaded in a real headless Chromium (#18): it attaches again
(the invitation stands) and its fresh terminal shows what the shell printed before,
from the broker's tail, without anything new being printed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import expect

from browserkit import chromium, logged_in_page
from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    agent_status,
    running_fleet,
    wait_for,
    wait_pending,
)

pytestmark = pytest.mark.browser

GUEST, PASSWORD = "ahinvweb", "a long test password 4"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("invitereload")) as (_, broker, agent):
        broker.add_user(GUEST, PASSWORD)
        yield broker, agent


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


def connections(agent: Agent, invitation_id: str, connected: bool) -> None:
    wait_for(
        lambda: any(
            g["session_id"] == invitation_id and g["connected"] is connected
            for g in agent_status(agent)["sessions"]
        ),
        15,
        f"the invitee's channel {'open' if connected else 'closed'} on the PC",
    )


async def test_a_reloaded_invitee_page_attaches_again_with_the_shells_recent_output(
    setup: tuple[Broker, Agent], browser: Chromium
) -> None:
    broker, agent = setup
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        session: dict[str, Any] = desk.request(agent.agent_id).json()
        owner, owner_problems = await logged_in_page(browser, broker, TECH, TECH_PW)
        await owner.goto(f"{broker.url}/terminal.html?session={session['id']}")
        await asyncio.to_thread(wait_pending, agent, session["id"])
        assert (await asyncio.to_thread(agent_call, agent, "allow", session["id"])).returncode == 0
        owner_rows = owner.locator(".xterm-rows")
        await expect(owner_rows).to_contain_text(re.compile(r"[$#]"), timeout=15000)
        await owner.locator(".xterm").click()
        await owner.keyboard.type("echo before-guest-$((9*9))\n")
        await expect(owner_rows).to_contain_text("before-guest-81", timeout=15000)
        asked = desk.client.post(
            f"/api/v1/sessions/{session['id']}/invite", json={"username": GUEST, "mode": "observe"}
        )
        assert asked.status_code == 201, asked.text
        invitation = asked.json()
        await asyncio.to_thread(wait_pending, agent, invitation["id"])
        allowed = await asyncio.to_thread(agent_call, agent, "allow", invitation["id"])
        assert allowed.returncode == 0, allowed.stderr

        guest, guest_problems = await logged_in_page(browser, broker, GUEST, PASSWORD)
        await guest.goto(f"{broker.url}/terminal.html?session={session['id']}")
        guest_rows = guest.locator(".xterm-rows")
        # printed before the guest came: on their screen all the same
        await expect(guest_rows).to_contain_text("before-guest-81", timeout=15000)
        await owner.keyboard.type("echo with-guest-$((7*7))\n")
        await expect(guest_rows).to_contain_text("with-guest-49", timeout=15000)
        await asyncio.to_thread(connections, agent, invitation["id"], True)

        await guest.reload()
        guest_rows = guest.locator(".xterm-rows")
        await expect(guest_rows).to_contain_text("with-guest-49", timeout=15000)
        await asyncio.to_thread(connections, agent, invitation["id"], True)
        await owner.keyboard.type("echo after-reload-$((6*6))\n")
        await expect(guest_rows).to_contain_text("after-reload-36", timeout=15000)
        assert owner_problems == [] and guest_problems == []
        assert desk.client.post(f"/api/v1/sessions/{session['id']}/end").status_code == 200
    finally:
        desk.close()
