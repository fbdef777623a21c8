"""Debian's Chromium driven by Playwright, shared by the browser tests.

Never a downloaded browser: ``executable_path`` is the system's. A logged-in
page collects what must stay empty: CSP violations, page errors, dialogs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright
from playwright.sync_api import Page as SyncPage
from playwright.sync_api import sync_playwright

from harness import Broker

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def logged_in_page(
    browser: Browser, broker: Broker, user: str, password: str, **context: Any
) -> tuple[Page, list[str]]:
    """A page logged in through the API (as the console does), and its problem list."""
    page = await (await browser.new_context(ignore_https_errors=True, **context)).new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    await page.goto(broker.url + "/")
    answer: dict[str, Any] = await page.evaluate(
        """async ([user, password]) => {
            const r = await fetch('/api/v1/login', {method: 'POST',
              headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({username: user, password})});
            const body = await r.json();
            sessionStorage.setItem('csrf', body.csrf_token);
            return body;
        }""",
        [user, password],
    )
    if not answer.get("csrf_token"):
        raise AssertionError(f"login failed: {answer}")
    return page, problems


@contextmanager
def console_signed_in(broker: Broker, user: str, password: str) -> Iterator[SyncPage]:
    """The console's page in Chromium (sync Playwright), signed in through its own
    form as ``user``; the browser closed after."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(broker.url + "/")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            page.click("#login-submit")
            yield page
        finally:
            browser.close()
