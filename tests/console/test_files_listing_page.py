"""The files page when the PC's answer to a listing breaks: never half a folder shown
as the whole of it, in a real headless Chromium; and a view-only session's page.

The PC side is real (a per-user agent as the local user ``ahlistweb``, OpenSSH's
sftp-server; the broker with ``--files-timeout 2``): a PC that does not answer
(its sftp-server stopped) is a 504 the page says in the technician's language. A
listing cut mid-way needs a PC that stops between two batches of one folder, which
a test cannot time from outside; the page is given the broker's two answers for it
as the broker sends them (``sftpwire.list_folder``, ``test_files_listing_cut.py``):
``listing_cut``, and an answer that ends without its ``]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from machinekit import CAN_RUN, WHY_NOT
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, Route, expect
from userkit import UserAgent, user_agent_online

from browserkit import chromium, logged_in_page
from harness import TECH, TECH_PW, Broker

USER = "ahlistweb"
CUT_BODY = '[{"name": "a.txt", "type": "file", "size": 1, "mtime": 1}'  # no "]"
CUT_ANSWER = (
    '{"error": "listing_cut", "message": "big: the listing is incomplete, cut after 100'
    " entries: big: the PC's file system did not answer in 2 s\"}"
)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    with user_agent_online(
        tmp_path_factory.mktemp("listweb"), USER, ("--files-timeout", "2")
    ) as made:
        yield made


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


async def files_page(
    browser: Chromium,
    broker: Broker,
    agent: UserAgent,
    locale: str = "en-US",
    *,
    view_only: bool = False,
) -> tuple[Page, list[str]]:
    page, problems = await logged_in_page(browser, broker, TECH, TECH_PW, locale=locale)
    session_id = await page.evaluate(
        """async ([agentId, viewOnly]) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'files', reason: 'slow drive',
                                    view_only: viewOnly})});
            return (await r.json()).id;
        }""",
        [agent.agent_id, view_only],
    )
    await page.goto(f"{broker.url}/files.html?session={session_id}")
    await asyncio.to_thread(agent.wait_pending, session_id)
    assert (await asyncio.to_thread(agent.cli, "allow", session_id)).returncode == 0
    await page.wait_for_selector("#files:not([hidden])", timeout=15000)
    await expect(page.locator("#entries tr").first).to_be_visible()  # the home folder
    return page, problems


async def open_folder(page: Page, folder: str) -> None:
    await page.fill("#path", folder)
    await page.click("#path-form button[type=submit]")


def sftp_servers() -> list[int]:
    found = subprocess.run(
        ["pgrep", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


async def test_a_pc_that_does_not_answer_is_said_and_the_page_goes_on(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    broker, agent = setup
    page, problems = await files_page(browser, broker, agent)
    pids = sftp_servers()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        await open_folder(page, ".")
        await expect(page.locator("#files-error")).to_have_text(
            "The PC's file system did not answer in time (a stuck network drive?)."
            " The session goes on: try again.",
            timeout=10000,
        )
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    await open_folder(page, ".")
    await expect(page.locator("#files-error")).to_have_text("")
    await expect(page.locator("#entries tr").first).to_be_visible()
    assert problems == []


@pytest.mark.parametrize(
    ("status", "body"), [(200, CUT_BODY), (504, CUT_ANSWER)], ids=["cut_body", "listing_cut"]
)
async def test_a_cut_listing_shows_as_incomplete_not_as_the_folder(
    setup: tuple[Broker, UserAgent], browser: Chromium, status: int, body: str
) -> None:
    broker, agent = setup
    page, problems = await files_page(browser, broker, agent)

    async def cut(route: Route) -> None:
        await route.fulfill(status=status, content_type="application/json", body=body)

    await page.route("**/files?path=big", cut)
    await open_folder(page, "big")
    await expect(page.locator("#files-error")).to_have_text(
        "Listing incomplete: the PC's answer broke off mid-way, so the folder is not shown."
        " Try again."
    )
    await expect(page.locator("#entries tr")).to_have_count(0)
    assert problems == []


async def test_a_cut_listing_is_said_in_french(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    broker, agent = setup
    page, problems = await files_page(browser, broker, agent, locale="fr-BE")

    async def cut(route: Route) -> None:
        await route.fulfill(status=200, content_type="application/json", body=CUT_BODY)

    await page.route("**/files?path=big", cut)
    await open_folder(page, "big")
    await expect(page.locator("#files-error")).to_contain_text("Liste incomplète")
    assert problems == []


async def test_a_view_only_files_session_offers_no_upload(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    broker, agent = setup
    page, problems = await files_page(browser, broker, agent, locale="nl-BE", view_only=True)
    await expect(page.locator("#upload-row")).to_be_hidden()
    await expect(page.locator("#view-only-note")).to_have_text(
        "Alleen lezen: u kunt bestanden openen en downloaden, niets wijzigen op de pc."
    )
    plain, _ = await files_page(browser, broker, agent)
    await expect(plain.locator("#upload-row")).to_be_visible()
    await expect(plain.locator("#view-only-note")).to_be_hidden()
    assert problems == []


async def test_the_console_asks_for_files_view_only(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    broker, agent = setup
    page, problems = await logged_in_page(browser, broker, TECH, TECH_PW)
    await page.goto(broker.url + "/")  # the console, signed in
    row = page.locator(f'#machines-rows tr[data-agent="{agent.agent_id}"]')
    await row.get_by_role("button", name="Ask for a shell on", exact=False).click()
    await page.click("#request-kind label:has(input[value=files-view])")
    await page.fill("#request-form textarea[name=reason]", "read the printer log")
    await page.click("#request-send")
    await page.locator("#request-sent").wait_for()
    sessions = await page.evaluate("async () => (await fetch('/api/v1/sessions')).json()")
    asked = next(s for s in sessions if s["reason"] == "read the printer log")
    assert asked["kind"] == "files" and asked["view_only"] is True
    await asyncio.to_thread(agent.wait_pending, asked["id"])
    await asyncio.to_thread(agent.cli, "deny", asked["id"])
    assert problems == []
