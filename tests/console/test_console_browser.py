"""The console in a real headless Chromium (Debian's, driven by Playwright).

Log in with TOTP, watch a machine come online without reloading, and show a
rogue agent whose host name, user and OS are HTML/script as plain text with no
CSP violation. Screenshots of every page land in test-artifacts/console/.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from allowhelp.broker.audit.flapping import iso
from allowhelp.broker.auth import totp
from allowhelp.certs.sshkeys import agent_id_for, public_key_line
from allowhelp.certs.token import EnrolmentToken
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM
from browserkit import ARTIFACTS as SHARED_ARTIFACTS
from browserkit import CHROMIUM, CHROMIUM_ARGS
from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Broker, Fleet, broker_cli
from wallkit import COOKIE, Console, enrol_totp

pytestmark = pytest.mark.browser

ARTIFACTS = SHARED_ARTIFACTS / "console"
HOSTILE = {
    "hostname": "<img src=x onerror=alert(1)>",
    "os": "<script>alert(2)</script>",
    "user": '"><svg onload=alert(3)>',
}
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page with everything that would betray an injection recorded."""

    def __init__(self, browser: Browser, width: int = 1440, height: int = 900) -> None:
        self.context = browser.new_context(
            ignore_https_errors=True, viewport={"width": width, "height": height}
        )
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.add_init_script(WATCH_CSP)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if "Content Security" in msg.text else None,
        )

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__csp")
        return found

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def close(self) -> None:
        self.context.close()


class RogueAgent:
    """An enrolled agent that reports HTML as its names, on a raw reverse-SSH tunnel."""

    def __init__(self, broker: Broker) -> None:
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.id = agent_id_for(self.key)
        secret = EnrolmentToken.decode(broker.token()).secret
        with broker.sync_client() as client:
            answer = client.post(
                "/api/v1/enrol",
                json={
                    "secret": secret,
                    "host_key": public_key_line(self.key),
                    "version": "0.0-rogue",
                    **HOSTILE,
                },
            )
        assert answer.status_code == 201, answer.text
        self._port = int(broker.tunnel.rpartition(":")[2])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._conn: asyncssh.SSHServerConnection | None = None

    def __enter__(self) -> RogueAgent:
        self._thread.start()

        class Control(asyncssh.SSHServerSession[bytes]):
            def subsystem_requested(self, subsystem: str) -> bool:
                return subsystem == CONTROL_SUBSYSTEM

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return False

            def session_requested(self) -> Control:
                return Control()

        async def dial() -> asyncssh.SSHServerConnection:
            options = asyncssh.SSHServerConnectionOptions(
                server_host_keys=[self.key], server_factory=Server
            )
            return await asyncssh.connect_reverse(
                "127.0.0.1", self._port, config=None, options=options, encoding=None
            )

        self._conn = asyncio.run_coroutine_threadsafe(dial(), self._loop).result(20)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._conn is not None:
                self._conn.close()
                await self._conn.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def sign_in(page: Page, user: str, password: str) -> None:
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("#login-submit")


def row(page: Page, agent_id: str) -> Any:
    return page.locator(f'#machines-rows tr[data-agent="{agent_id}"]')


def test_totp_login_live_agent_and_hostile_names_as_text(
    staffed: Fleet, broker: Broker, browser: Browser
) -> None:
    alice = Console.login(broker, TECH, TECH_PW)
    secret, _, step = enrol_totp(alice)
    alice.close()
    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(broker.url + "/")
        page.wait_for_selector("#login-form input[name=username]")
        watched.shot("01-login")
        sign_in(page, TECH, TECH_PW)
        page.wait_for_selector("#login-totp-step:not([hidden])")
        page.fill("input[name=totp]", totp.code_at(secret, step * totp.PERIOD))  # used already
        page.click("#login-submit")
        page.wait_for_selector("#login-error:has-text('already')")
        watched.shot("02-login-totp")
        page.fill("input[name=totp]", totp.code_at(secret, (step + 1) * totp.PERIOD))
        page.click("#login-submit")
        page.wait_for_selector("#view-machines:not([hidden])")
        page.wait_for_selector("#live[data-state=live]")
        page.evaluate("window.__marker = 'no reload'")

        agent = staffed.agent("desk-pc")
        assert agent.enroll(broker.token()).returncode == 0
        agent.start("--reconnect-cap", "2")
        row(page, agent.agent_id).locator("text=Online").wait_for()

        with RogueAgent(broker) as rogue:
            rogue_row = row(page, rogue.id)
            rogue_row.locator("text=Online").wait_for()
            assert rogue_row.locator(".host").text_content() == HOSTILE["hostname"]
            assert rogue_row.locator(".os").text_content() == HOSTILE["os"]
            assert HOSTILE["user"] in (rogue_row.text_content() or "")
            assert (
                page.locator("#machines-rows img, #machines-rows svg, script:not([src])").count()
                == 0
            )
            page.focus("#machines-search")
            watched.shot("03-machines-hostile-agent")
            rogue_row.get_by_role("button", name="Ask for a shell").click()
            page.wait_for_selector("#request-dialog[open]")
            assert HOSTILE["hostname"] in (page.text_content("#request-title") or "")
            page.fill("textarea[name=reason]", "Printer queue stuck, as discussed on the phone")
            watched.shot("04-request-dialog")
            page.keyboard.press("Escape")
            assert page.evaluate("window.__marker") == "no reload"  # it all came live
            assert watched.dialogs == []
            assert watched.violations() == []
            assert watched.errors == []
        row(page, rogue.id).locator("text=Offline").wait_for()  # going away is live too

        for view, name in (("help", "05-help-requests"), ("sessions", "06-my-sessions")):
            page.click(f'.nav a[data-view="{view}"]')
            page.wait_for_selector(f"#view-{view}:not([hidden])")
            watched.shot(name)
        assert page.locator('.nav a[data-view="audit"]').is_hidden()  # technicians: no admin

        # The detector works: injected markup would have been reported.
        page.evaluate(
            "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=alert(9)>')"
        )
        page.wait_for_function("window.__csp.length > 0")
        assert watched.dialogs == []
    finally:
        watched.close()


def test_admin_pages_keyboard_and_sizes(broker: Broker, browser: Browser) -> None:
    watched = Watched(browser, 1366, 768)
    page = watched.page
    try:
        page.goto(broker.url + "/")
        page.wait_for_selector("#login-form input[name=username]")
        page.focus("input[name=username]")
        page.keyboard.type(ADMIN)
        page.keyboard.press("Tab")
        page.keyboard.type(ADMIN_PW)
        page.keyboard.press("Enter")  # keyboard only
        page.wait_for_selector("#view-machines:not([hidden])")
        page.wait_for_selector("#live[data-state=live]")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        watched.shot("07-machines-laptop")

        page.click('.nav a[data-view="audit"]')
        page.wait_for_selector("#audit-status[data-state=ok]")
        assert "Chain verified" in (page.text_content("#audit-status") or "")
        anchoring = page.text_content("#audit-anchoring") or ""
        assert "Head anchored every 100 records to" in anchoring
        assert str(broker.data / "audit.anchors") in anchoring
        assert "anchored heads checked now" in anchoring
        assert "Anchors only catch a rewrite if kept off this machine" in anchoring
        assert "save it elsewhere" not in (page.text_content("#view-audit") or "")
        assert page.locator("#audit-checks > *").count() == 0  # nothing to warn about
        page.wait_for_selector("#audit-rows tr:has-text('auth.login.ok')")
        watched.shot("08-audit")

        page.click('.nav a[data-view="users"]')
        page.wait_for_selector(f"#users-rows tr:has-text('{TECH}')")
        watched.shot("09-users")

        page.click('.nav a[data-view="tokens"]')
        page.wait_for_selector("#view-tokens:not([hidden])")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-created:not([hidden])")
        command = page.text_content("#token-command") or ""
        assert command.startswith("allowhelp-agent enroll ah1_")
        watched.shot("10-enrolment-token")

        page.click("#who")
        page.wait_for_selector("#totp-off:not([hidden])")
        page.click("#totp-start")
        page.wait_for_selector("#totp-setup:not([hidden])")
        assert page.eval_on_selector("#totp-qr", "img => img.complete && img.naturalWidth > 0")
        watched.shot("11-account-totp-setup")

        page.set_viewport_size({"width": 1920, "height": 1080})
        page.click('.nav a[data-view="machines"]')
        page.wait_for_selector("#view-machines:not([hidden])")
        watched.shot("12-machines-wide")
        cookie = next(c["value"] for c in watched.context.cookies() if c["name"] == COOKIE)
        page.click("#logout")
        page.wait_for_selector("#view-login:not([hidden])")
        assert watched.violations() == [] and watched.errors == [] and watched.dialogs == []
    finally:
        watched.close()
    with broker.sync_client() as replay:
        replay.cookies.set(COOKIE, cookie)
        assert replay.get("/api/v1/me").status_code == 401


def test_required_totp_is_set_up_in_the_page_first(broker: Broker, browser: Browser) -> None:
    admin = Console.login(broker, ADMIN, ADMIN_PW)
    made = admin.post("/api/v1/users", json={"username": "hank", "password": "hank password 12"})
    assert made.status_code == 201
    assert admin.client.put("/api/v1/policy", json={"require_totp": True}).status_code == 200
    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(broker.url + "/#machines")
        page.wait_for_selector("#login-form input[name=username]")
        sign_in(page, "hank", "hank password 12")
        page.wait_for_selector("#account-required:not([hidden])")  # nothing else first
        assert page.locator('.nav a[data-view="machines"][inert]').count() == 1
        assert page.evaluate("location.hash") == "#machines"
        page.click("#totp-start")
        page.wait_for_selector("#totp-setup:not([hidden])")
        secret = (page.text_content("#totp-secret") or "").replace(" ", "")
        page.fill("#totp-form input[name=code]", totp.code_at(secret, time.time()))
        page.click("#totp-form button[type=submit]")
        page.wait_for_selector("#totp-codes:not([hidden])")
        codes = page.locator("#totp-code-list li").all_text_contents()
        assert len(codes) == 10 and all(totp.looks_like_recovery_code(c) for c in codes)
        watched.shot("13-account-recovery-codes")
        page.click("#totp-done")
        page.wait_for_selector("#view-machines:not([hidden])")
        page.wait_for_selector("#live[data-state=live]")
        assert watched.violations() == [] and watched.errors == [] and watched.dialogs == []
    finally:
        watched.close()
        admin.client.put("/api/v1/policy", json={"require_totp": False})
        admin.close()
    with broker.sync_client() as client:
        answer = client.post(
            "/api/v1/login", json={"username": "hank", "password": "hank password 12"}
        )
        assert answer.json()["error"] == "totp_required"


def export_lines(broker: Broker) -> list[str]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_audit_page_of_a_broker_started_on_a_broken_chain(tmp_path: Path, browser: Browser) -> None:
    """Stop a broker, edit a record behind its back (turned into a flapping summary
    with HTML as its peer address), start it again: the page says it started on a
    broken chain and where the break is recorded, as text."""
    fleet = Fleet(tmp_path)
    watched: Watched | None = None
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        assert broker.stop() == 0  # anchors the head at stop
        since = time.time() - 90
        remote = "<img src=x onerror=alert(7)>"
        details = {
            "state": "started",
            "connects": 3,
            "disconnects": 2,
            "since": iso(since),
            "until": iso(since + 75),
            "remote": remote,
            "online": True,
            "window_seconds": 600,
        }
        conn = sqlite3.connect(broker.data / "audit.sqlite3", isolation_level=None)
        try:  # what someone with the file does: drop the guard, edit, leave the hashes
            conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
            conn.execute(
                "UPDATE audit SET type = 'agent.flapping', code = 'AH1306', details = ? "
                "WHERE seq = 2",
                (json.dumps(details),),
            )
        finally:
            conn.close()
        broker.extra = ["--audit-anchor-every", "1"]  # so this run anchors heads too
        broker.start()  # shouts, records the break, keeps serving
        admin = Console.login(broker, ADMIN, ADMIN_PW)
        try:
            status = admin.get("/api/v1/audit/verify").json()
        finally:
            admin.client.close()
        assert status["started_broken"] is True and status["first_bad_seq"] == 2
        record_seq = status["startup"]["record_seq"]
        assert status["anchors_checked"] >= 1  # the head anchored at stop, at least

        watched = Watched(browser, 1366, 1100)
        page = watched.page
        page.goto(broker.url + "/#audit")
        page.wait_for_selector("#login-form input[name=username]")
        sign_in(page, ADMIN, ADMIN_PW)
        page.wait_for_selector("#audit-status[data-state=bad]")
        assert "Chain broken at record 2" in (page.text_content("#audit-status") or "")
        warning = page.text_content("#audit-started-broken") or ""
        assert "The broker started on a broken chain (found at start-up, " in warning
        assert (
            f"and kept serving; the break is recorded as audit record #{record_seq} "
            "(audit.chain_broken)." in warning
        )
        assert "Start-up check (the whole chain): Record 2 was edited (hash mismatch)." in warning
        broken_row = page.locator(f'#audit-rows tr[data-seq="{record_seq}"]')
        broken_row.wait_for()
        assert broken_row.get_attribute("data-type") == "audit.chain_broken"
        assert "warn-row" in (broken_row.get_attribute("class") or "")
        assert "Chain broken at record 2" in (broken_row.text_content() or "")
        flapping = page.locator('#audit-rows tr[data-seq="2"] .details').text_content() or ""
        assert flapping.startswith("started: 3 connects, 2 disconnects between ")
        assert remote in flapping  # as text
        anchoring = page.text_content("#audit-anchoring") or ""
        assert "Head anchored every 1 record to " in anchoring
        last = re.search(r"last (\d+):([0-9a-f]{16})… at ", anchoring)
        assert last is not None, anchoring
        hashes = {r["seq"]: r["hash"] for r in map(json.loads, export_lines(broker))}
        assert hashes[int(last[1])].startswith(last[2])  # a head the chain really had
        assert re.search(r"; \d+ anchored heads? checked now\.", anchoring), anchoring
        assert "Anchors only catch a rewrite if kept off this machine" in anchoring
        assert page.locator("#view-audit img, #view-audit svg, script:not([src])").count() == 0
        watched.shot("14-audit-started-broken")
        assert watched.violations() == [] and watched.errors == [] and watched.dialogs == []
    finally:
        if watched is not None:
            watched.close()
        fleet.close()
