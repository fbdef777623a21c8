"""The screen replay in a real headless Chromium: a session recorded from the console's own
noVNC viewer plays back in the admin's player (the PC's known-colour window on its canvas),
seeks both ways, plays faster at speed 8; one from another viewer is flagged, and a recording
altered on disk is refused on the page."""

from __future__ import annotations

import asyncio
import functools
import time
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
    Desk,
    Fleet,
    online,
    wait_for,
    wait_pending,
)
from screenkit import (
    MARK_BOX,
    MARK_COLOUR,
    SCREEN_SIZE,
    RfbClient,
    agent_env,
    on_pc,
    screen_socket,
    start_agent,
    start_xserver,
)

pytestmark = [pytest.mark.browser, pytest.mark.x11]

LIVE_SECONDS = 3.0  # how long the recorded session lasts: time for the player to take at speed 8
# The canvas at the known-colour window (screenkit.MARK_BOX): its centre; null without a picture.
CANVAS_AT = """([x, y, w, h]) => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return null;
  const context = canvas.getContext('2d');
  const at = Array.from(context.getImageData(x + (w >> 1), y + (h >> 1), 1, 1).data);
  return {width: canvas.width, height: canvas.height, centre: at.slice(0, 3)};
}"""
SEEK = """(ms) => {
  const seek = document.getElementById('seek');
  seek.value = String(ms);
  seek.dispatchEvent(new Event('change'));
}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("screenreplay")
    xserver = start_xserver(root)
    fleet = Fleet(root)
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        agent = start_agent(fleet, broker, "x", agent_env(DISPLAY=xserver.display))
        wait_for(functools.partial(online, broker, agent.agent_id), 20, "agent online")
        yield {"broker": broker, "agent": agent, "xserver": xserver}
    finally:
        fleet.close()
        xserver.close()


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


async def shows_mark(page: Page, timeout: float = 15) -> dict[str, Any]:
    """The canvas once it shows the PC's known-colour window (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, Any] | None = await page.evaluate(CANVAS_AT, list(MARK_BOX))
        if seen is not None and seen["centre"] == list(MARK_COLOUR):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"the known-colour window is not on the canvas: {seen}")
        await asyncio.sleep(0.1)


async def watch_with_the_mouse(page: Page, seconds: float) -> None:
    """The technician looks on for ``seconds``, moving the mouse over the screen: the
    recording's length. A still screen sends nothing after its first pictures, so
    without input the recording would end with them, whatever the session lasted."""
    box = await page.locator("canvas").first.bounding_box()
    assert box is not None
    end, step = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        await page.mouse.move(box["x"] + 20 + step % 40, box["y"] + 20)
        step += 7
        await asyncio.sleep(0.2)


async def live_session(browser: Chromium, broker: Broker, agent: Agent) -> str:
    """A technician watches the PC in the console's screen page for a few seconds."""
    page, problems = await logged_in_page(
        browser, broker, TECH, TECH_PW, viewport={"width": 1000, "height": 760}
    )
    session: dict[str, Any] = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'screen', reason: 'replay test'})});
            return await r.json();
        }""",
        agent.agent_id,
    )
    await page.goto(f"{broker.url}/screen.html?session={session['id']}")
    await asyncio.to_thread(wait_pending, agent, session["id"])
    allowed = await asyncio.to_thread(on_pc, agent, "allow", session["id"])
    assert allowed.returncode == 0, allowed.stderr
    await page.wait_for_selector("body[data-screen=connected]", timeout=15000)
    await shows_mark(page)
    await watch_with_the_mouse(page, LIVE_SECONDS)
    await page.click("#end")
    await expect(page.locator("#message")).to_contain_text("ended", timeout=10000)
    assert problems == []
    await page.context.close()
    return str(session["id"])


async def test_a_recorded_screen_replays_with_seek_and_speed(
    world: dict[str, Any], browser: Chromium
) -> None:
    broker: Broker = world["broker"]
    session_id = await live_session(browser, broker, world["agent"])
    page, problems = await logged_in_page(
        browser, broker, ADMIN, ADMIN_PW, viewport={"width": 1000, "height": 760}
    )
    # The admin's Sessions list links the ended session to its replay.
    await page.goto(f"{broker.url}/#sessions")
    await page.reload()  # the console was loaded before the login (logged_in_page)
    await page.click(f'#sessions-rows a[href="/replay-screen.html?session={session_id}"]')
    await page.wait_for_url(f"**/replay-screen.html?session={session_id}")
    await expect(page.locator("#message")).to_have_text(
        "Recording verified against the audit log.", timeout=15000
    )  # the console's own viewer was recorded: colours as they were
    duration = int(await page.get_attribute("body", "data-duration") or 0)
    # the recording spans the watch: its last frame answers the last pointer move, made
    # within one 0.2 s step of the watch's end (the handshake before it is no longer
    # 0.1 s long: x11vnc is greeted, agent/rfbgreeting.py)
    assert duration >= (LIVE_SECONDS - 0.25) * 1000
    await page.wait_for_selector("body[data-replay=ended]", timeout=duration + 30000)
    seen = await shows_mark(page, timeout=5)  # not blank: the PC's window where it was
    assert (seen["width"], seen["height"]) == SCREEN_SIZE
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "replay-screen.png"))
    seconds = duration // 1000
    length = f"{seconds // 60}:{seconds % 60:02d}"
    assert await page.text_content("#time") == f"{length} / {length}"

    # Seek back to the start: a fresh decoder with nothing fed shows nothing.
    await page.evaluate(SEEK, 0)
    await page.wait_for_selector("body[data-position='0'][data-replay=paused]")
    assert await page.evaluate(CANVAS_AT, list(MARK_BOX)) is None
    # Seek to the end: everything fed at once, the picture is back at once.
    await page.evaluate(SEEK, duration)
    await page.wait_for_selector(f"body[data-position='{duration}']", timeout=10000)
    await shows_mark(page, timeout=5)

    # From the start again at speed 8: over in well under half the recording's length.
    await page.evaluate(SEEK, 0)
    await page.wait_for_selector("body[data-position='0']")
    await page.select_option("#speed", "8")
    began = time.monotonic()
    await page.click("#play")
    await page.wait_for_selector("body[data-replay=ended]", timeout=duration + 30000)
    assert time.monotonic() - began < duration / 1000 / 2
    await shows_mark(page, timeout=5)
    assert problems == []


def recorded_by_python(broker: Broker, agent: Agent) -> str:
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.request(agent.agent_id, kind="screen", reason="to be altered")
        session_id: str = answer.json()["id"]
        wait_pending(agent, session_id)
        assert on_pc(agent, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")

        async def watch() -> None:
            async with screen_socket(desk, session_id) as ws:
                client = RfbClient(ws)
                init = await client.handshake()
                await client.request_raw(init)
                await client.framebuffer_update(init)

        asyncio.run(watch())
        desk.wait_state(session_id, "ended")
        return session_id
    finally:
        desk.close()


async def test_an_altered_recording_is_refused_on_the_page(
    world: dict[str, Any], browser: Chromium
) -> None:
    broker: Broker = world["broker"]
    session_id = await asyncio.to_thread(recorded_by_python, broker, world["agent"])
    page, problems = await logged_in_page(browser, broker, ADMIN, ADMIN_PW)
    # Recorded from a viewer in the PC's own pixel format, not noVNC's: the page says so.
    await page.goto(f"{broker.url}/replay-screen.html?session={session_id}")
    await expect(page.locator("#message")).to_contain_text("another viewer", timeout=15000)
    path = broker.data / "recordings" / f"{session_id}.rfb"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    await page.goto(f"{broker.url}/replay-screen.html?session={session_id}")
    await page.wait_for_selector("body[data-replay=failed]", timeout=15000)
    message = await page.text_content("#message")
    assert message is not None and message.startswith("Cannot replay this session:")
    assert "does not match its audit digest" in message
    assert await page.locator("#screen canvas").count() == 0
    assert problems == []
