"""The screen page in a real headless Chromium: consent, noVNC, the desktop, hostile names."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, expect

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from browserkit import ARTIFACTS, chromium, logged_in_page
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Fleet,
    online,
    wait_for,
    wait_pending,
)
from screenkit import (
    FAKE_VNC,
    MARK_BOX,
    MARK_COLOUR,
    SCREEN_SIZE,
    XServer,
    agent_env,
    gone,
    on_pc,
    processes,
    start_agent,
    start_xserver,
)

# The canvas at the known-colour window of the PC's screen (screenkit.MARK_BOX):
# its centre, two corners just inside and two points just outside.
CANVAS_MARK = """([x, y, w, h]) => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return null;
  const context = canvas.getContext('2d');
  const at = (px, py) => Array.from(context.getImageData(px, py, 1, 1).data.slice(0, 3));
  return {width: canvas.width, height: canvas.height,
          centre: at(x + (w >> 1), y + (h >> 1)),
          inside: [at(x, y), at(x + w - 1, y + h - 1)],
          outside: [at(x - 1, y), at(x + w, y + h - 1), at(x, y + h)]};
}"""

pytestmark = [pytest.mark.browser, pytest.mark.x11]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("screenweb")
    xserver = start_xserver(root)
    fleet = Fleet(root)
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        mode = root / "fake-mode"
        mode.write_text("hostile")
        envs = {
            "x": agent_env(DISPLAY=xserver.display),
            "fake": agent_env(**{TEST_COMMAND_ENV: f"{sys.executable} {FAKE_VNC} {mode}"}),
        }
        agents = {name: start_agent(fleet, broker, name, env) for name, env in envs.items()}
        for agent in agents.values():
            wait_for(functools.partial(online, broker, agent.agent_id), 20, "agent online")
        yield {"broker": broker, "xserver": xserver, "mode": mode, **agents}
    finally:
        fleet.close()
        xserver.close()


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


async def tech_page(browser: Chromium, broker: Broker) -> tuple[Page, list[str]]:
    return await logged_in_page(
        browser, broker, TECH, TECH_PW, viewport={"width": 1000, "height": 760}
    )


async def open_screen(page: Page, broker: Broker, agent: Agent, *, view_only: bool = False) -> str:
    session: dict[str, Any] = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'screen', reason: 'browser test'})});
            return await r.json();
        }""",
        agent.agent_id,
    )
    await page.goto(f"{broker.url}/screen.html?session={session['id']}")
    await page.wait_for_selector("#phrase-line:not([hidden])")
    assert await page.text_content("#phrase") == session["phrase"]
    await asyncio.to_thread(wait_pending, agent, session["id"])
    options = ["--view-only"] if view_only else []
    allowed = await asyncio.to_thread(on_pc, agent, "allow", session["id"], *options)
    assert allowed.returncode == 0, allowed.stderr
    return str(session["id"])


async def test_the_page_shows_the_remote_desktop(world: dict[str, Any], browser: Chromium) -> None:
    broker: Broker = world["broker"]
    xserver: XServer = world["xserver"]
    page, problems = await tech_page(browser, broker)
    await open_screen(page, broker, world["x"])
    await page.wait_for_selector("body[data-screen=connected]", timeout=15000)
    canvas = page.locator("#screen canvas")
    await expect(canvas).to_be_visible()

    colour = list(MARK_COLOUR)

    async def painted() -> dict[str, Any]:
        """The canvas once it shows the known-colour window (bounded: 15 s)."""
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            seen: dict[str, Any] | None = await page.evaluate(CANVAS_MARK, list(MARK_BOX))
            if seen is not None and seen["centre"] == colour:
                return seen
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the PC's known-colour window is not shown: {seen}")
            await asyncio.sleep(0.2)

    seen = await painted()
    ARTIFACTS.mkdir(exist_ok=True)
    await canvas.screenshot(path=str(ARTIFACTS / "screen.png"))
    await page.screenshot(path=str(ARTIFACTS / "screen-page.png"))
    assert (seen["width"], seen["height"]) == SCREEN_SIZE
    # Where it is on the PC, and no bigger: the picture is the PC's, unscaled.
    assert seen["inside"] == [colour, colour], seen
    assert colour not in seen["outside"], seen
    assert await page.locator("#view-only").is_hidden()
    assert await page.locator("#clipboard").is_visible()  # control: clipboard both ways
    xserver.focus_window()
    await canvas.click()  # the pointer lands on the xev window, in the middle of the screen
    await page.keyboard.type("k")
    await asyncio.to_thread(
        wait_for, lambda: "keysym 0x6b, k)" in xserver.keys_seen(), 10, "a key through noVNC"
    )
    pids = processes(xserver.display)
    assert pids
    await page.click("#end")
    await expect(page.locator("#message")).to_contain_text("ended (technician)", timeout=10000)
    await asyncio.to_thread(wait_for, lambda: gone(pids), 10, "x11vnc to go")
    assert problems == []


async def test_view_only_is_shown_and_keeps_the_clipboard_closed(
    world: dict[str, Any], browser: Chromium
) -> None:
    broker: Broker = world["broker"]
    page, problems = await tech_page(browser, broker)
    await open_screen(page, broker, world["x"], view_only=True)
    await page.wait_for_selector("body[data-screen=connected]", timeout=15000)
    await expect(page.locator("#view-only")).to_be_visible()
    assert await page.locator("#clipboard").is_hidden()
    xserver: XServer = world["xserver"]
    before = xserver.keys_seen().count("KeyPress")
    pids = processes(xserver.display)
    assert pids
    await page.locator("#screen canvas").click()
    await page.keyboard.type("qq")
    await page.click("#end")
    await expect(page.locator("#message")).to_contain_text("ended", timeout=10000)
    # Once x11vnc is gone nothing it was sent can still reach the display.
    await asyncio.to_thread(wait_for, lambda: gone(pids), 10, "x11vnc to go")
    assert xserver.keys_seen().count("KeyPress") == before
    assert problems == []


async def test_a_hostile_desktop_name_stays_text(world: dict[str, Any], browser: Chromium) -> None:
    broker: Broker = world["broker"]
    world["mode"].write_text("hostile")
    page, problems = await tech_page(browser, broker)
    await open_screen(page, broker, world["fake"])
    name = page.locator("#desktop-name")
    await expect(name).to_have_text("<img src=x onerror=alert(1)>[31mevil", timeout=15000)
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert not [p for p in problems if p.startswith("dialog")]
    assert broker.proc is not None and broker.proc.poll() is None
    await page.click("#end")


async def test_a_failed_screen_says_why(world: dict[str, Any], browser: Chromium) -> None:
    broker: Broker = world["broker"]
    world["mode"].write_text("bad-name")
    page, _ = await tech_page(browser, broker)
    await open_screen(page, broker, world["fake"])
    message = page.locator("#message")
    await expect(message).to_contain_text("The screen could not be shown", timeout=15000)
    await expect(message).to_contain_text("desktop name")
    await expect(page.locator("#state")).to_have_text("ended", timeout=10000)
