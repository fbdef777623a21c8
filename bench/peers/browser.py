"""Keystrokes typed by Chromium into each product's own terminal page, until rendered.

Debian's Chromium driven by Playwright, launched as the console's browser tests
launch it (``tests/kit/browserkit.py``: the system's ``/usr/bin/chromium``, the
same flags). Two pages in one browser:

* allowhelp: the console (logged in through ``/api/v1/login`` as the console
  does), a shell asked through ``/api/v1/sessions`` and allowed at once on the PC
  (the agent's local socket, as ``bench.peers.ours`` does), then
  ``terminal.html?session=<id>``;
* MeshCentral: its login page (the bench account typed into ``#username`` and
  ``#password``), then ``/?gotonode=<node>&viewmode=12`` (the device's Terminal
  tab) and its Connect button.

Both pages render with xterm.js's DOM renderer (``.xterm-rows``). A script in
each page stamps every ``keydown`` (capture phase, ``event.timeStamp``); before
each key the bench arms a ``MutationObserver`` on ``.xterm-rows`` that resolves
when the rows hold one more ``x`` than before; the figure is that moment less
the keydown's stamp, both on the page's ``performance.now()`` clock, so the
DevTools round trips of the driver are not counted. The key goes to the shell
(its own echo in cooked mode); every ``BATCH`` keys a Ctrl-U clears the line.
Keys alternate between the products in batches; the first ``WARMUP`` of each are
not counted.

Each key comes after a pause drawn from ``PAUSE_S`` (the same seeded draws for
every page), as a person types, not the moment the previous echo showed. This
Chromium draws a frame on demand, at least one interval (16.7 ms) after the
one before, and after a key it holds the page's other tasks (the socket's
message among them) until the frame that answers the key has been drawn
(docs/benchmarks.md §7e). Typed back to back, a key landed a fixed, driver-paced
time after the frame that showed the previous echo, and the figure became two
frames less the driver's own round trips on that page, which differ per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from playwright.async_api import Browser, Page, Route, async_playwright

from bench.common import percentile
from bench.peers.meshserver import ADMIN as MESH_ADMIN
from bench.peers.meshserver import ADMIN_PW as MESH_ADMIN_PW
from bench.peers.meshserver import MeshServer
from bench.peers.ours import _agent_call
from bench.screen import Allowhelp
from bench.stack import TECH, TECH_PW

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # tests/kit/browserkit.py's
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BATCH, WARMUP = 25, 10
TIMEOUT_MS = 30_000
PAUSE_S = (0.05, 0.15)  # before each key: a brisk typist's 7-20 keys a second
SEED = 19

Pause = Callable[[], float]
Sample = tuple[float, float | None]

# Installed before the page's own scripts: stamps the first message on the terminal's
# socket (ours: ``/terminal``, theirs: ``meshrelay.ashx``) after each arm, before the
# page's own handlers see it: when the echo reached the page, apart from its render.
WIRE = """(() => {
  const Native = window.WebSocket;
  window.__ahWire = 0;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      if (/meshrelay|\\/terminal/.test(String(args[0]))) {
        super.addEventListener('message', (e) => {
          const d = e.data;
          const typed = typeof d === 'string' ? d.includes('x')
            : d instanceof ArrayBuffer ? new Uint8Array(d).includes(0x78) : false;
          if (typed && !window.__ahWire) window.__ahWire = performance.now();
        });
      }
    }
  };
})();"""

PROBE = """() => {
  if (window.__ahKey) return;
  const k = {down: 0, base: 0, result: null};
  window.__ahKey = k;
  window.addEventListener('keydown', () => { k.down = performance.now(); }, true);
  k.rows = () => document.querySelector('.xterm-rows');
  k.count = () => ((k.rows().textContent || '').match(/x/g) || []).length;
  k.arm = () => {
    k.base = k.count();
    window.__ahWire = 0;
    k.result = new Promise((resolve, reject) => {
      const timer = setTimeout(() => { obs.disconnect(); reject(new Error('no echo in 10 s')); },
                               10000);
      const obs = new MutationObserver(() => {
        if (k.count() > k.base) {
          const at = performance.now();
          obs.disconnect(); clearTimeout(timer);
          resolve([at - k.down, window.__ahWire ? window.__ahWire - k.down : null]);
        }
      });
      obs.observe(k.rows(), {subtree: true, childList: true, characterData: true});
    });
  };
}"""


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _ready(page: Page) -> None:
    """The terminal shows a prompt; the probe is installed."""
    rows = page.locator(".xterm-rows")
    await rows.wait_for(timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => /[$#>]\\s*$/m.test(document.querySelector('.xterm-rows').innerText)",
        timeout=TIMEOUT_MS,
    )
    await page.locator(".xterm").first.click()
    await page.evaluate(PROBE)


async def our_page(
    browser: Browser, stack: Allowhelp, replace: dict[str, str] | None = None
) -> tuple[Page, str]:
    """The console's terminal page on a consented shell; ``replace``: {path: the
    script served instead} (a baseline's page scripts, ``bench.browserkeys``)."""
    page = await _new_page(browser)
    for path, body in (replace or {}).items():
        await page.route(f"{stack.broker.url}{path}", _serving(body))
    url = stack.broker.url
    await page.goto(url + "/")
    session: dict[str, Any] = await page.evaluate(
        """async ([user, password, agentId]) => {
            const r = await fetch('/api/v1/login', {method: 'POST',
              headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({username: user, password})});
            const body = await r.json();
            sessionStorage.setItem('csrf', body.csrf_token);
            const s = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': body.csrf_token},
              body: JSON.stringify({agent_id: agentId, kind: 'shell', reason: 'peers bench'})});
            return await s.json();
        }""",
        [TECH, TECH_PW, stack.agent.agent_id],
    )
    session_id = str(session.get("id", ""))
    if not session_id:
        raise RuntimeError(f"the console did not open a shell session: {session}")
    await page.goto(f"{url}/terminal.html?session={session_id}")
    for _ in range(400):  # the consent prompt appears on the PC within seconds
        pending = await asyncio.to_thread(_agent_call, stack, {"op": "pending"})
        if any(p["session_id"] == session_id for p in pending["pending"]):
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_agent_call, stack, {"op": "allow", "session_id": session_id})
    await _ready(page)
    return page, session_id


def _serving(body: str) -> Callable[[Route], Awaitable[None]]:
    async def fulfil(route: Route) -> None:
        await route.fulfill(body=body, content_type="text/javascript")

    return fulfil


async def their_page(browser: Browser, server: MeshServer, node: str) -> Page:
    page = await _new_page(browser)
    await page.goto(server.url + "/")
    await page.fill("#username", MESH_ADMIN)
    await page.fill("#password", MESH_ADMIN_PW)
    await page.click("#loginButton")
    await page.wait_for_selector("#connectbutton2", state="attached", timeout=TIMEOUT_MS)
    short = node.rsplit("/", maxsplit=1)[-1]
    await page.goto(f"{server.url}/?gotonode={short}&viewmode=12")
    connect = page.locator("#connectbutton2")
    await connect.wait_for(state="visible", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => !document.getElementById('connectbutton2').disabled", timeout=TIMEOUT_MS
    )
    await connect.click()
    await _ready(page)
    return page


async def _new_page(browser: Browser) -> Page:
    context = await browser.new_context(ignore_https_errors=True)
    await context.add_init_script(WIRE)
    return await context.new_page()


async def _batch(page: Page, count: int, pause: Pause | None) -> list[Sample]:
    """``count`` keys on ``page``: ms each from keydown to the rendered echo, and to
    the echo's arrival on the page's socket; then Ctrl-U. ``pause``: seconds to wait
    before each key (None: the next key the moment the echo showed)."""
    got: list[Sample] = []
    before = int(await page.evaluate("() => window.__ahKey.count()"))
    for _ in range(count):
        if pause is not None:
            await asyncio.sleep(pause())
        await page.evaluate("() => window.__ahKey.arm()")
        await page.keyboard.press("x")
        rendered, wire = await page.evaluate("() => window.__ahKey.result")
        got.append((float(rendered), None if wire is None else float(wire)))
    await page.keyboard.press("Control+u")
    await page.wait_for_function(
        "(before) => window.__ahKey.count() <= before", arg=before, timeout=TIMEOUT_MS
    )
    return got


def pacer(seed: int = SEED) -> Pause:
    """The pause before each key, uniform in ``PAUSE_S``, from its own seeded draws."""
    draws = random.Random(seed)
    return lambda: draws.uniform(*PAUSE_S)


async def interleaved(
    series: dict[str, tuple[Page, Pause | None]], count: int, why: dict[str, str]
) -> dict[str, list[Sample]]:
    """Batches of ``BATCH`` keys per series in turn, the order reversed every round;
    round 0 is the warm-up (``WARMUP`` keys each, not counted). A series that fails
    stops with its reason in ``why``; the others go on."""
    samples: dict[str, list[Sample]] = {name: [] for name in series}
    live = dict(series)
    for i in range(max(1, count // BATCH) + 1):
        for name in list(live) if i % 2 == 0 else list(reversed(live)):
            page, pause = live[name]
            try:
                got = await _batch(page, WARMUP if i == 0 else BATCH, pause)
            except Exception as exc:  # one series failing leaves the others
                why[name] = repr(exc)
                del live[name]
                continue
            if i > 0:
                samples[name] += got
    return samples


def summary(samples: list[Sample]) -> dict[str, float | None] | None:
    """Percentiles of the render figure; the socket figure only when at least nine
    keys in ten had their echo seen in a message (a Blob is not read)."""
    if not samples:
        return None
    rendered = [s[0] for s in samples]
    wire = [s[1] for s in samples if s[1] is not None]
    seen = len(wire) >= 0.9 * len(samples)
    return {
        "p50_ms": round(percentile(rendered, 50), 3),
        "p99_ms": round(percentile(rendered, 99), 3),
        "keys": len(samples),
        "echo_in_page_p50_ms": round(percentile(wire, 50), 3) if seen else None,
        "echo_in_page_p99_ms": round(percentile(wire, 99), 3) if seen else None,
    }


async def keystrokes(
    stack: Allowhelp | None, mesh: tuple[MeshServer, str] | None, count: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """{product: {p50_ms, p99_ms, keys} or None}, and why a product is None."""
    why: dict[str, str] = {}
    pages: dict[str, Page] = {}
    samples: dict[str, list[Sample]] = {}
    session_id = ""
    async with chromium() as browser:
        try:
            if stack is not None:
                try:
                    pages["allowhelp"], session_id = await our_page(browser, stack)
                except Exception as exc:  # reported as null with its reason
                    why["allowhelp"] = repr(exc)
            if mesh is not None:
                try:
                    pages["meshcentral"] = await their_page(browser, *mesh)
                except Exception as exc:  # reported as null with its reason
                    why["meshcentral"] = repr(exc)
            series: dict[str, tuple[Page, Pause | None]] = {
                name: (page, pacer()) for name, page in pages.items()
            }
            samples = await interleaved(series, count, why)
        finally:
            if session_id and stack is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(stack.end, session_id)
    figures = {
        name: None if name in why else summary(samples.get(name, []))
        for name in ("allowhelp", "meshcentral")
    }
    return figures, why
