"""The console in the technician's language, in Debian's Chromium (Playwright).

A browser that asks for French (``Accept-Language: fr-BE``) gets the French
console; a request to a PC whose user reads French shows French words in the
console, the same the agent holds; a choice of Dutch in the picker is kept
over the browser's languages; English when the browser asks for nothing we
speak. Dates are written the browser's regional way. The API and the audit
log answer in their one machine-readable form whatever the language.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from allowhelp.broker.model.phrase import WORD_LISTS
from browserkit import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from harness import (
    ADMIN,
    ADMIN_PW,
    PY,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    agent_call,
    running_fleet,
    wait_pending,
)

pytestmark = pytest.mark.browser

LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
FRENCH_MONTHS = r"(janv|févr|mars|avr|mai|juin|juil|août|sept|oct|nov|déc)"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    env = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    env["LANG"] = "fr_BE.UTF-8"
    with running_fleet(
        tmp_path_factory.mktemp("console-language"),
        agent_args=("--reconnect-cap", "2", "--prompt", "none"),
        agent_env=env,
    ) as (_, broker, agent):
        yield broker, agent


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    (ARTIFACTS / "console").mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sign_in(
    browser: Browser, broker: Broker, locale: str, user: str = TECH, password: str = TECH_PW
) -> Page:
    context = browser.new_context(ignore_https_errors=True, locale=locale)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    page.goto(broker.url + "/")
    page.fill("#login-form input[name=username]", user)
    page.fill("#login-form input[name=password]", password)
    page.click("#login-submit")
    expect(page.locator("#view-machines")).to_be_visible()
    assert not errors, errors
    return page


def test_accept_language_fr_gives_the_french_console_and_the_users_words(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    broker, agent = fleet
    page = sign_in(browser, broker, "fr-BE")
    try:
        assert page.evaluate("navigator.languages[0]") == "fr-BE"
        assert page.locator("html").get_attribute("lang") == "fr"
        expect(page.locator("#nav-sessions")).to_have_text("Mes sessions")
        expect(page.locator("#who")).to_have_text(re.compile(r" · technicien$"))
        expect(page.locator(".nav a[data-view=help] span[data-i18n]")).to_have_text(
            "Demandes d'aide"
        )
        expect(page.locator("#machines-summary")).to_have_text("1 machine · 1 en ligne")
        row = page.locator(f"tr[data-agent='{agent.agent_id}']")
        expect(row.locator(".badge").first).to_have_text("En ligne")
        row.get_by_role("button", name=re.compile("Demander un terminal sur")).click()
        expect(page.locator("#request-title")).to_contain_text("Demander un accès d'aide à")
        page.fill("#request-form textarea[name=reason]", "Imprimante bloquée")
        page.click("#request-send")
        expect(page.locator("#request-sent h2")).to_have_text("Demande envoyée")
        expect(page.locator("#sent-phrase")).to_have_text(re.compile(r"^[a-z]+ [a-z]+ [a-z]+$"))
        phrase = page.locator("#sent-phrase").inner_text()
        words = phrase.split()
        assert len(words) == 3 and all(w in WORD_LISTS["fr"] for w in words), phrase
        # the agent holds the same words (its user reads them on the prompt)
        pending = json.loads(
            subprocess.run(
                [PY, "-m", "allowhelp.agent.cli", "pending", "--json", "--config",
                 str(agent.config)],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout
        )  # fmt: skip
        assert [p["phrase"] for p in pending] == [phrase]
        page.screenshot(path=str(ARTIFACTS / "console" / "request-sent-fr.png"))
        page.keyboard.press("Escape")
        page.goto(broker.url + "/#sessions")
        session_row = page.locator("#sessions-rows tr").first
        expect(session_row.locator(".badge")).to_have_text("En attente d'accord")
        expect(session_row.locator(".phrase-cell")).to_have_text(phrase)
        asked = session_row.locator("td.nowrap").first
        expect(asked).to_have_text("à l'instant")
        title = asked.get_attribute("title") or ""
        assert re.search(FRENCH_MONTHS, title), title  # "6 déc. 2026, 12:31"
        page.screenshot(path=str(ARTIFACTS / "console" / "sessions-fr.png"))
    finally:
        page.context.close()


def test_the_technicians_choice_is_kept_over_the_browsers_languages(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    page = sign_in(browser, fleet[0], "fr-BE")
    try:
        page.select_option("#language", "nl")
        expect(page.locator("#nav-sessions")).to_have_text("Mijn sessies")
        assert page.locator("html").get_attribute("lang") == "nl"
        page.reload()
        expect(page.locator(".nav a[data-view=machines]")).to_have_text("Machines")
        expect(page.locator("#machines-summary")).to_have_text("1 machine · 1 online")
        expect(page.locator("#nav-sessions")).to_have_text("Mijn sessies")
    finally:
        page.context.close()


def test_a_language_we_do_not_speak_gets_english(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    page = sign_in(browser, fleet[0], "es-ES")
    try:
        assert page.locator("html").get_attribute("lang") == "en"
        expect(page.locator("#nav-sessions")).to_have_text("My sessions")
        expect(page.locator("#machines-summary")).to_have_text("1 machine · 1 online")
    finally:
        page.context.close()


def test_the_audit_api_stays_machine_readable_in_any_language(
    fleet: tuple[Broker, Agent],
) -> None:
    broker = fleet[0]
    answers = []
    for language in ("fr-BE,fr;q=0.9", "nl", "en"):
        with broker.sync_client() as client:
            client.headers["Accept-Language"] = language
            login = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
            assert login.status_code == 200, login.text
            answer = client.get("/api/v1/audit")
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
    records = [r for r in answers[0] if r["type"] == "session.requested"]
    assert records and all(re.fullmatch(r"[a-z_]+\.[a-z_.]+", r["type"]) for r in records)
    for record in records:
        datetime.fromisoformat(record["ts"])  # an ISO time, never a local format
    # the same records, word for word, whatever language was asked (each login adds one)
    assert answers[1][: len(answers[0])] == answers[0] == answers[2][: len(answers[0])]


def test_the_brokers_refusals_are_said_in_french_from_their_codes(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    context = browser.new_context(ignore_https_errors=True, locale="fr-BE")
    page = context.new_page()
    try:
        page.goto(fleet[0].url + "/")
        expect(page.locator("#login-title")).to_have_text("Console du service d'assistance")
        page.click("#login-submit")
        expect(page.locator("#login-error")).to_have_text(
            "Saisissez votre nom d'utilisateur et votre mot de passe."
        )
        page.fill("#login-form input[name=username]", TECH)
        page.fill("#login-form input[name=password]", "not the password at all")
        page.click("#login-submit")  # the API says invalid_credentials, in English
        expect(page.locator("#login-error")).to_have_text(
            "Nom d'utilisateur ou mot de passe incorrect."
        )
    finally:
        context.close()


def test_an_admin_manages_users_and_tokens_in_dutch(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    context = browser.new_context(ignore_https_errors=True, locale="nl-BE")
    page = context.new_page()
    try:
        page.goto(fleet[0].url + "/")
        page.fill("#login-form input[name=username]", ADMIN)
        page.fill("#login-form input[name=password]", ADMIN_PW)
        page.click("#login-submit")
        expect(page.locator("#who")).to_have_text(re.compile(r" · beheerder$"))
        page.goto(fleet[0].url + "/#users")
        expect(page.locator("#user-form h2")).to_have_text("Een gebruiker toevoegen")
        tech = page.locator("#users-rows tr", has_text=TECH)
        expect(tech.locator(".badge").first).to_have_text("Technicus")
        expect(tech.get_by_role("button", name="Beheerder maken")).to_be_visible()
        page.goto(fleet[0].url + "/#tokens")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-created h2 span[data-i18n]")).to_have_text("Nieuw token")
        expect(page.locator("#tokens-rows .badge").first).to_have_text("actief")
        page.screenshot(path=str(ARTIFACTS / "console" / "tokens-nl.png"))
    finally:
        context.close()


# The audit, account, replay and files views in French (#24): the words the console
# used to show in English, none of which may be left. The records, host names and
# file names are data and are not looked at.
ENGLISH_LEFT = (
    "Checking the chain", "Chain verified", "none edited", "Refresh and verify",
    "Load older records", "Filter by type", "Filter audit records", "anchored", "Seq",
    "Actor", "Target", "Event", "Two-factor", "authenticator", "recovery code", "Set up",
    "Turn on", "I have saved", "Scan the code", "Enter the 6-digit", "requires",
    "Lost your phone", "QR code for", "Folder on the PC", "Send a file", "Upload",
    "Download", "Name", "Size", "Changed", "Chat with", "Write to the user",
    "Notes for the ticket", "Save notes", "The folder above", "Choose a file", "Loading",
    "loading", "End session", "Verification phrase", "Recording", "recorded",
    "Cannot replay", "Replay", "Files", "Send", "Open", "Up", "Head", "checked now",
    "none anchored", "Last error", "before it", "nowhere", "the whole chain",
)  # fmt: skip
WORDS_OF = """(selector) => [...document.querySelectorAll(selector)].flatMap((root) =>
  [root, ...root.querySelectorAll('*')].flatMap((node) => [
    ...[...node.childNodes].filter((c) => c.nodeType === 3).map((c) => c.textContent),
    ...['placeholder', 'title', 'aria-label', 'alt'].map((a) => node.getAttribute(a) || '')]))
  .join(' | ')"""


def english_left(page: Page, selector: str) -> list[str]:
    """The English words still shown (hidden parts too) under ``selector``."""
    shown = str(page.evaluate(WORDS_OF, selector))
    assert len(shown) > 40, shown  # there is something to look at
    return [words for words in ENGLISH_LEFT if re.search(rf"\b{re.escape(words)}\b", shown)]


DUTCH_MONTHS = r"(jan|feb|mrt|apr|mei|jun|jul|aug|sep|okt|nov|dec)"
VIEWS = {  # what each language says where English used to be
    "fr-BE": {
        "verified": r"^Chaîne vérifiée\. \d+ entrées, aucune modifiée, aucune manquante\. Tête ",
        "anchoring": "vérifiée",
        "months": FRENCH_MONTHS,
        "role": " · technicien",
        "set_up": "Configurer la connexion en deux étapes",
        "qr": "Code QR pour votre application d'authentification",
        "turn_on": "Activer",
    },
    "nl-BE": {
        "verified": r"^Keten gecontroleerd\. \d+ regels, geen gewijzigd, geen ontbrekend\. Kop ",
        "anchoring": "gecontroleerd",
        "months": DUTCH_MONTHS,
        "role": " · technicus",
        "set_up": "Aanmelden in twee stappen instellen",
        "qr": "QR-code voor uw authenticatie-app",
        "turn_on": "Inschakelen",
    },
}


@pytest.mark.parametrize("locale", VIEWS)
def test_the_audit_view_is_in_the_technicians_language(
    browser: Browser, fleet: tuple[Broker, Agent], locale: str
) -> None:
    words = VIEWS[locale]
    page = sign_in(browser, fleet[0], locale, ADMIN, ADMIN_PW)
    try:
        page.goto(fleet[0].url + "/#audit")
        expect(page.locator("#audit-status")).to_have_attribute("data-state", "ok")
        expect(page.locator("#audit-status")).to_contain_text(re.compile(words["verified"]))
        expect(page.locator("#audit-anchoring")).to_contain_text(words["anchoring"])
        first = page.locator("#audit-rows tr").first
        expect(first).to_be_visible()
        when = first.locator("td").nth(1)
        assert re.search(words["months"], when.inner_text()), when.inner_text()
        iso = when.get_attribute("title") or ""
        datetime.fromisoformat(iso)  # the log's own time, as it holds it
        assert re.fullmatch(r"[a-z_]+\.[a-z_.]+", first.get_attribute("data-type") or "")
        assert english_left(page, "#view-audit .view-head, #audit-status, #audit-checks") == []
        assert english_left(page, "#audit-anchoring, #view-audit .toolbar, table.audit thead") == []
        page.screenshot(path=str(ARTIFACTS / "console" / f"audit-{locale}.png"))
    finally:
        page.context.close()


@pytest.mark.parametrize("locale", VIEWS)
def test_the_account_view_is_in_the_technicians_language(
    browser: Browser, fleet: tuple[Broker, Agent], locale: str
) -> None:
    words = VIEWS[locale]
    page = sign_in(browser, fleet[0], locale)
    try:
        page.goto(fleet[0].url + "/#account")
        expect(page.locator("#account-who")).to_have_text(re.compile(f"{words['role']}$"))
        page.get_by_role("button", name=words["set_up"]).click()
        expect(page.locator("#totp-setup")).to_be_visible()
        expect(page.locator("#totp-qr")).to_have_attribute("alt", words["qr"])
        expect(page.get_by_role("button", name=words["turn_on"])).to_be_visible()
        assert english_left(page, "#view-account") == []  # the hidden parts too
        page.screenshot(path=str(ARTIFACTS / "console" / f"account-{locale}.png"))
    finally:
        page.context.close()


def test_the_files_and_replay_pages_are_in_french(
    browser: Browser, fleet: tuple[Broker, Agent]
) -> None:
    broker, agent = fleet
    page = sign_in(browser, broker, "fr-BE")
    try:
        session = page.evaluate(
            """async (agentId) => {
                const r = await fetch('/api/v1/sessions', {method: 'POST',
                  headers: {'Content-Type': 'application/json',
                            'X-CSRF-Token': sessionStorage.getItem('csrf')},
                  body: JSON.stringify({agent_id: agentId, kind: 'files',
                                        reason: 'le scan', ticket: 'HD-7'})});
                return await r.json();
            }""",
            agent.agent_id,
        )
        assert "id" in session, session
        page.goto(f"{broker.url}/files.html?session={session['id']}")
        expect(page.locator("#phrase-line")).to_be_visible()
        assert page.title() == "Fichiers — allowhelp"
        wait_pending(agent, session["id"], timeout=30)
        allowed = agent_call(agent, "allow", session["id"])
        assert allowed.returncode == 0, allowed.stderr
        # this agent runs as root, which never exchanges files: the session ends at
        # once, and the page says so (the panel itself in French: test_files_browser.py)
        expect(page.locator("#message")).to_have_text("La session est terminée (erreur).")
        expect(page.locator("#state")).to_have_text("terminée")
        expect(page.locator("#ticket")).to_have_text("Ticket HD-7")
        assert english_left(page, ".session-bar, #notice, #files, #side") == []  # hidden too
        page.screenshot(path=str(ARTIFACTS / "console" / "files-fr.png"))
    finally:
        page.context.close()
    admin = sign_in(browser, broker, "fr-BE", ADMIN, ADMIN_PW)
    try:  # a files session has no recording: the page says so, in French
        admin.goto(f"{broker.url}/replay.html?session={session['id']}")
        expect(admin.locator("#message")).to_contain_text("Impossible de revoir cette session : ")
        expect(admin.locator("#state")).to_have_text(re.compile(r"^enregistré le "))
        assert re.search(FRENCH_MONTHS, admin.locator("#state").inner_text())
        assert admin.title() == "Revoir — allowhelp"
        assert english_left(admin, ".session-bar, .notice") == [], admin.content()
    finally:
        admin.context.close()
