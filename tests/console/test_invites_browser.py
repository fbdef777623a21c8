"""Invitations (#18) in a real headless Chromium: the owner invites from the shell
page, the invitee's page waits with their own phrase until the PC user allows
them, then shows the shell; the observer's keys do not reach it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import expect

from browserkit import ARTIFACTS, chromium, logged_in_page
from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    agent_call,
    pending,
    running_fleet,
    wait_for,
    wait_pending,
)

pytestmark = pytest.mark.browser

OBSERVER, PASSWORD = "ahobsweb", "a long test password 3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("inviteweb")) as (_, broker, agent):
        broker.add_user(OBSERVER, PASSWORD)
        yield broker, agent


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


def pending_invitation(agent: Agent, session_id: str) -> dict[str, Any]:
    """The invitation waiting on the PC for ``session_id`` (its id is the prompt's)."""
    found: dict[str, Any] = wait_for(
        lambda: next((p for p in pending(agent) if p.get("joins") == session_id), None),
        15,
        "the invitation's prompt",
    )
    return found


async def test_invite_from_the_page_and_join_once_allowed(
    setup: tuple[Broker, Agent], browser: Chromium
) -> None:
    broker, agent = setup
    owner, owner_problems = await logged_in_page(browser, broker, TECH, TECH_PW)
    session: dict[str, Any] = await owner.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'shell', reason: 'invite test'})});
            return await r.json();
        }""",
        agent.agent_id,
    )
    await owner.goto(f"{broker.url}/terminal.html?session={session['id']}")
    await asyncio.to_thread(wait_pending, agent, session["id"])
    assert (await asyncio.to_thread(agent_call, agent, "allow", session["id"])).returncode == 0
    owner_rows = owner.locator(".xterm-rows")
    await expect(owner_rows).to_contain_text(re.compile(r"[$#]"), timeout=15000)
    # the owner's "Invite…" panel
    await owner.click("#invites summary")
    await owner.fill("#invites input", OBSERVER)
    await owner.select_option("#invites select", "observe")
    await owner.click("#invites button[type=submit]")
    await expect(owner.locator("#invite-list")).to_contain_text(OBSERVER, timeout=15000)
    invitation = await asyncio.to_thread(pending_invitation, agent, session["id"])

    # the invitee's page waits, with the phrase the PC user sees
    guest, guest_problems = await logged_in_page(browser, broker, OBSERVER, PASSWORD)
    await guest.goto(f"{broker.url}/terminal.html?session={session['id']}")
    await guest.wait_for_selector("#phrase-line:not([hidden])")
    assert await guest.text_content("#phrase") == invitation["phrase"]
    assert await guest.locator("#end").is_hidden()  # an invitee ends nothing
    assert await guest.locator("#screen").is_hidden()  # no terminal before the user allows
    assert (
        await asyncio.to_thread(agent_call, agent, "allow", invitation["session_id"])
    ).returncode == 0
    guest_rows = guest.locator(".xterm-rows")
    await guest.wait_for_selector(".xterm-rows", timeout=15000)
    await expect(owner.locator("#invite-list")).to_contain_text("joined", timeout=15000)
    assert await guest.locator("#side").is_hidden()  # chat and notes are the owner's
    await owner.locator(".xterm").click()
    await owner.keyboard.type("echo together-$((8*8))\n")
    await expect(guest_rows).to_contain_text("together-64", timeout=15000)
    await guest.locator(".xterm").click()
    await guest.keyboard.type("echo guest-typed-$((1+2))\n")
    await owner.keyboard.type("echo fence-$((3+4))\n")
    await expect(guest_rows).to_contain_text("fence-7", timeout=15000)
    assert "guest-typed-3" not in (await owner_rows.text_content() or "")
    ARTIFACTS.mkdir(exist_ok=True)
    await owner.screenshot(path=str(ARTIFACTS / "invite-owner.png"))
    await guest.screenshot(path=str(ARTIFACTS / "invite-guest.png"))
    await owner.click("#end")
    await expect(owner.locator("#state")).to_have_text("ended", timeout=15000)
    assert owner_problems == [] and guest_problems == []


async def api_call(page: Any, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``fetch`` in the signed-in ``page``, as the console does (CSRF header); the JSON."""
    answer: dict[str, Any] = await page.evaluate(
        """async ([method, path, body]) => {
            const r = await fetch(path, {method, headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify(body)});
            return {status: r.status, body: await r.json()};
        }""",
        [method, path, body],
    )
    return answer


async def test_an_allowed_invitee_waits_for_the_owner_to_open_the_session(
    setup: tuple[Broker, Agent], browser: Chromium
) -> None:
    """Invited and allowed before the owner opened the shell: the invitee's page says
    it waits for them (nothing records what it would show), then joins by itself
    once the owner's page opens the shell."""
    broker, agent = setup
    owner, owner_problems = await logged_in_page(browser, broker, TECH, TECH_PW)
    made = await api_call(
        owner,
        "POST",
        "/api/v1/sessions",
        {"agent_id": agent.agent_id, "kind": "shell", "reason": "invitee first"},
    )
    assert made["status"] == 201, made
    session_id = made["body"]["id"]
    await asyncio.to_thread(wait_pending, agent, session_id)
    assert (await asyncio.to_thread(agent_call, agent, "allow", session_id)).returncode == 0
    path = f"/api/v1/sessions/{session_id}"
    await expect_active(owner, path)
    asked = await api_call(
        owner, "POST", f"{path}/invite", {"username": OBSERVER, "mode": "control"}
    )
    assert asked["status"] == 201, asked
    invitation = await asyncio.to_thread(pending_invitation, agent, session_id)
    assert (
        await asyncio.to_thread(agent_call, agent, "allow", invitation["session_id"])
    ).returncode == 0
    guest, guest_problems = await logged_in_page(browser, broker, OBSERVER, PASSWORD)
    await guest.goto(f"{broker.url}/terminal.html?session={session_id}")
    await expect(guest.locator("#message")).to_contain_text(f"Waiting for {TECH}", timeout=15000)
    assert await guest.locator("#screen").is_hidden()
    await owner.goto(f"{broker.url}/terminal.html?session={session_id}")
    await expect(owner.locator(".xterm-rows")).to_contain_text(re.compile(r"[$#]"), timeout=15000)
    guest_rows = guest.locator(".xterm-rows")
    await guest.wait_for_selector(".xterm-rows", timeout=15000)
    await owner.locator(".xterm").click()
    await owner.keyboard.type("echo joined-late-$((6*7))\n")
    await expect(guest_rows).to_contain_text("joined-late-42", timeout=15000)
    await owner.click("#end")
    await expect(owner.locator("#state")).to_have_text("ended", timeout=15000)
    assert owner_problems == [] and guest_problems == []


async def expect_active(page: Any, path: str) -> None:
    for _ in range(150):
        seen: dict[str, Any] = await page.evaluate(
            "async (path) => (await fetch(path)).json()", path
        )
        if seen.get("state") == "active":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the session did not become active")
