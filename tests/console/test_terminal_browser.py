"""The shell page in a real headless Chromium: consent, type, read back."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, expect

from browserkit import ARTIFACTS, chromium, logged_in_page
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    agent_call,
    running_fleet,
    wait_pending,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("termweb")) as (_, broker, agent):
        yield broker, agent


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


async def request_shell(page: Page, agent_id: str) -> dict[str, Any]:
    session: dict[str, Any] = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'shell', reason: 'browser test'})});
            return await r.json();
        }""",
        agent_id,
    )
    return session


async def test_shell_in_the_browser(setup: tuple[Broker, Agent], browser: Chromium) -> None:
    broker, agent = setup
    # The page may use the clipboard (as a technician's browser would let it), so a
    # write from the PC would land there: the test reads it back.
    page, violations = await logged_in_page(
        browser, broker, TECH, TECH_PW, permissions=["clipboard-read", "clipboard-write"]
    )
    session = await request_shell(page, agent.agent_id)
    await page.goto(f"{broker.url}/terminal.html?session={session['id']}")
    await page.wait_for_selector("#phrase-line:not([hidden])")
    assert await page.text_content("#phrase") == session["phrase"]
    await asyncio.to_thread(wait_pending, agent, session["id"])
    assert (await asyncio.to_thread(agent_call, agent, "allow", session["id"])).returncode == 0
    await page.wait_for_selector(".xterm-rows", timeout=15000)
    rows = page.locator(".xterm-rows")
    await expect(rows).to_contain_text(re.compile(r"[$#]"), timeout=15000)
    await page.locator(".xterm").click()
    await page.keyboard.type("echo browser-$((7*6))\n")
    await expect(rows).to_contain_text("browser-42", timeout=15000)
    # OSC 52 from the PC must not reach the technician's clipboard. (xterm.js 6 has
    # no OSC 52 handler of its own, only the clipboard add-on writes the clipboard;
    # the page swallows OSC 52 so that no handler ever will.)
    mine = "the technician's own clipboard"
    await page.evaluate("(text) => navigator.clipboard.writeText(text)", mine)
    assert await page.evaluate("() => navigator.clipboard.readText()") == mine
    evil = base64.b64encode(b"rm -rf ~ # from the PC").decode()
    # Typed in parts, so only the output holds the payload (and "osc-done") whole:
    # once "osc-done" is shown, xterm.js has parsed the OSC 52 sequence before it.
    head, tail = evil[:8], evil[8:]
    await page.keyboard.type(f"printf '\\033]52;c;%s%s\\007osc-%s\\n' {head} {tail} done\n")
    await expect(rows).to_contain_text("osc-done", timeout=15000)
    assert await page.evaluate("() => navigator.clipboard.readText()") == mine
    assert evil not in (await rows.text_content() or "")  # swallowed, not shown either
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "terminal.png"))
    await page.click("#end")
    await expect(page.locator("#state")).to_have_text("ended", timeout=15000)
    assert violations == []

    # An admin replays it; the player shows what the shell printed.
    admin, admin_violations = await logged_in_page(browser, broker, ADMIN, ADMIN_PW)
    await admin.goto(f"{broker.url}/replay.html?session={session['id']}")
    await expect(admin.locator("#message")).to_have_text(
        "Recording verified against the audit log.", timeout=15000
    )
    await expect(admin.locator("#player")).to_contain_text("browser-42", timeout=15000)
    await admin.screenshot(path=str(ARTIFACTS / "replay.png"))
    assert admin_violations == []
