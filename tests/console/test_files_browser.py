"""The files page in a real headless Chromium: list, upload, download, chat, notes.

The PC side is real: a per-user agent run as the local user ``ahfilesweb``
(``userkit``), OpenSSH's sftp-server as that user. Names and messages from the
PC are hostile markup here, and must show up as text with no dialog, no page
error and no CSP violation.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from machinekit import CAN_RUN, WHY_NOT
from playwright.async_api import Browser as Chromium
from playwright.async_api import FilePayload, expect
from userkit import UserAgent, user_agent_online, user_path

from browserkit import ARTIFACTS, chromium, logged_in_page
from harness import TECH, TECH_PW, Broker

USER = "ahfilesweb"
HOSTILE = "<img src=x onerror=alert(1)>"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    with user_agent_online(tmp_path_factory.mktemp("filesweb"), USER) as made:
        yield made


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as launched:
        yield launched


def as_user(*argv: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", *argv], check=True)


async def test_the_file_panel_moves_files_both_ways_and_chats(
    setup: tuple[Broker, UserAgent], browser: Chromium, tmp_path: Path
) -> None:
    broker, agent = setup
    as_user("mkdir", str(user_path(USER, "docs")))
    as_user("touch", str(user_path(USER, f"{HOSTILE}.txt")))
    page, problems = await logged_in_page(browser, broker, TECH, TECH_PW)
    session: dict[str, Any] = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'files', reason: 'send the scan',
                                    ticket: 'HD-9'})});
            return await r.json();
        }""",
        agent.agent_id,
    )
    session_id = session["id"]
    await page.goto(f"{broker.url}/files.html?session={session_id}")
    await page.wait_for_selector("#phrase-line:not([hidden])")
    await asyncio.to_thread(agent.wait_pending, session_id)
    assert (await asyncio.to_thread(agent.cli, "allow", session_id)).returncode == 0
    await page.wait_for_selector("#files:not([hidden])", timeout=15000)
    await expect(page.locator("#ticket")).to_have_text("Ticket HD-9")
    entries = page.locator("#entries")
    await expect(entries).to_contain_text(f"{HOSTILE}.txt")  # a name, shown as text
    await expect(entries).to_contain_text("docs/")

    # upload 1 MiB into docs/, with the progress line saying so at the end
    await page.locator("#entries button.link", has_text="docs/").click()
    await expect(page.locator("#path")).to_have_value("docs")
    data = secrets.token_bytes(1024 * 1024)
    await page.set_input_files(
        "#upload-file",
        files=[FilePayload(name="scan.pdf", mimeType="application/pdf", buffer=data)],
    )
    await page.click("#upload")
    await expect(page.locator("#transfer-status")).to_contain_text(
        "Uploaded scan.pdf", timeout=20000
    )
    assert user_path(USER, "docs", "scan.pdf").read_bytes() == data
    await expect(page.locator("tr[data-name='scan.pdf']")).to_contain_text("1.0 MiB")

    # download it again through the panel, byte for byte
    async with page.expect_download() as fetched:
        await page.locator("tr[data-name='scan.pdf'] button.download").click()
    saved = tmp_path / "scan.pdf"
    await (await fetched.value).save_as(saved)
    assert saved.read_bytes() == data
    await expect(page.locator("#transfer-status")).to_contain_text("Downloaded scan.pdf")
    await page.click("#up")
    await expect(page.locator("#path")).to_have_value(".")

    # chat both ways, hostile text as text
    await page.fill("#chat-text", "Hello from the desk")
    await page.press("#chat-text", "Enter")
    await expect(page.locator("#chat-lines")).to_contain_text("Hello from the desk")
    shown = await asyncio.to_thread(agent.cli, "messages", session_id, "--json")
    assert json.loads(shown.stdout)[-1]["text"] == "Hello from the desk"
    said = await asyncio.to_thread(agent.cli, "chat", session_id, HOSTILE)
    assert said.returncode == 0, said.stderr
    await expect(page.locator("#chat-lines")).to_contain_text(HOSTILE, timeout=15000)
    assert await page.locator("#chat-lines img").count() == 0

    # notes for the ticket
    await page.fill("#notes", "scanner driver reinstalled")
    await page.click("#notes-save")
    await expect(page.locator("#notes-status")).to_have_text("saved")
    notes = await page.evaluate(
        "async (id) => (await (await fetch('/api/v1/sessions/' + id)).json()).notes", session_id
    )
    assert notes == "scanner driver reinstalled"

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "files-panel.png"), full_page=True)
    await page.click("#end")
    await expect(page.locator("#state")).to_contain_text("ended", timeout=15000)
    assert problems == []


async def test_the_shell_page_has_the_chat_and_notes_too(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    broker, agent = setup
    page, problems = await logged_in_page(browser, broker, TECH, TECH_PW)
    session_id = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'shell', reason: 'vpn',
                                    ticket: 'HD-10'})});
            return (await r.json()).id;
        }""",
        agent.agent_id,
    )
    await page.goto(f"{broker.url}/terminal.html?session={session_id}")
    await asyncio.to_thread(agent.wait_pending, session_id)
    assert (await asyncio.to_thread(agent.cli, "allow", session_id)).returncode == 0
    await page.wait_for_selector("#side:not([hidden])", timeout=15000)
    await expect(page.locator("#ticket")).to_have_text("Ticket HD-10")
    await page.click("#side summary")
    await page.fill("#chat-text", "typing in your shell now")
    await page.click("#chat-send")
    await expect(page.locator("#chat-lines")).to_contain_text("typing in your shell now")
    shown = await asyncio.to_thread(agent.cli, "messages", session_id, "--json")
    assert json.loads(shown.stdout)[-1]["text"] == "typing in your shell now"
    said = await asyncio.to_thread(agent.cli, "chat", session_id, "ok, go")
    assert said.returncode == 0, said.stderr
    await expect(page.locator("#chat-lines")).to_contain_text("ok, go", timeout=15000)
    await page.screenshot(path=str(ARTIFACTS / "shell-chat.png"))
    await page.click("#end")
    await expect(page.locator("#state")).to_contain_text("ended", timeout=15000)
    assert problems == []


async def test_the_file_panel_speaks_french(
    setup: tuple[Broker, UserAgent], browser: Chromium
) -> None:
    """#24: a technician whose browser asks for French gets the panel in French:
    its words, sizes and dates as Belgium writes them, the chat and notes too."""
    broker, agent = setup
    as_user("sh", "-c", f"head -c 1536 /dev/zero > {user_path(USER, 'rapport.txt')}")
    page, problems = await logged_in_page(browser, broker, TECH, TECH_PW, locale="fr-BE")
    session_id = await page.evaluate(
        """async (agentId) => {
            const r = await fetch('/api/v1/sessions', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': sessionStorage.getItem('csrf')},
              body: JSON.stringify({agent_id: agentId, kind: 'files', reason: 'le rapport'})});
            return (await r.json()).id;
        }""",
        agent.agent_id,
    )
    await page.goto(f"{broker.url}/files.html?session={session_id}")
    await expect(page.locator("#phrase-line")).to_contain_text("Mots de vérification à lire")
    await asyncio.to_thread(agent.wait_pending, session_id)
    assert (await asyncio.to_thread(agent.cli, "allow", session_id)).returncode == 0
    await page.wait_for_selector("#files:not([hidden])", timeout=15000)
    assert await page.title() == "Fichiers — allowhelp"
    await expect(page.locator("table.entries thead")).to_have_text("NomTailleModifié")
    row = page.locator("tr[data-name='rapport.txt']")
    await expect(row.locator("td").nth(1)).to_have_text("1,5 Kio")  # a decimal comma
    changed = await row.locator("td").nth(2).inner_text()
    assert re.search(r"(janv|févr|mars|avr|mai|juin|juil|août|sept|oct|nov|déc)", changed)
    await expect(row.locator("button.download")).to_have_text("Télécharger")
    async with page.expect_download():
        await row.locator("button.download").click()
    await expect(page.locator("#transfer-status")).to_have_text("rapport.txt téléchargé (1,5 Kio).")
    await page.click("#upload")  # no file chosen
    await expect(page.locator("#transfer-status")).to_have_text("Choisissez d'abord un fichier.")
    await page.fill("#chat-text", "Bonjour")
    await page.press("#chat-text", "Enter")
    await expect(page.locator("#chat-lines")).to_contain_text("Bonjour")
    said = await asyncio.to_thread(agent.cli, "chat", session_id, "merci")
    assert said.returncode == 0, said.stderr
    await expect(page.locator("#chat-lines")).to_contain_text("utilisateur au PC:", timeout=15000)
    await page.fill("#notes", "rapport envoyé")
    await page.click("#notes-save")
    await expect(page.locator("#notes-status")).to_have_text("enregistré")
    await page.click("#end")
    await expect(page.locator("#state")).to_contain_text("terminée", timeout=15000)
    assert problems == []
