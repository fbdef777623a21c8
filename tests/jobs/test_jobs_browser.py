"""The Jobs page and the machine details in a real headless Chromium, against a real
machine service (root) that opted in: make a job from the page, watch its result
arrive live, read hostile output as text, set a machine's groups, see its inventory,
cancel an approved job and see it cancelled.
Screenshots land in test-artifacts/jobs/.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobkit import create, enrolled_machine, opt_in, result_of, start, stop
from machinekit import CAN_RUN, WHY_NOT, Machine

from browserkit import ARTIFACTS, chromium, logged_in_page
from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Broker, Desk, staffed_broker, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)]
SHOTS = ARTIFACTS / "jobs"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    root = tmp_path_factory.mktemp("jobsweb")
    with staffed_broker(root) as fleet:
        broker = fleet.brokers[0]
        machine = enrolled_machine(broker, root, "pc")
        opt_in(machine.config, ("script",))
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        try:
            start(machine, admin)
            # the details row shows the inventory as it is when opened: wait until it is in
            wait_for(
                lambda: admin.client.get(f"/api/v1/agents/{machine.agent_id}/inventory").json()[
                    "inventory"
                ],
                30,
                "the machine's inventory",
            )
            yield broker, machine
        finally:
            admin.close()
            machine.stop()


async def test_an_admin_makes_a_job_and_watches_it_live(pc: tuple[Broker, Machine]) -> None:
    broker, machine = pc
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with chromium() as browser:
        page, problems = await logged_in_page(
            browser, broker, ADMIN, ADMIN_PW, viewport={"width": 1440, "height": 1000}
        )
        page.set_default_timeout(30_000)
        await page.goto(broker.url + "/#jobs")
        await page.reload()  # the page started before the login: now as the admin
        await page.locator("#live[data-state=live]").wait_for()
        await page.locator("#job-form .segmented label", has_text="Script").click()
        await page.check(f'#job-machines input[value="{machine.agent_id}"]')
        await page.fill('textarea[name="script"]', f"echo '{HOSTILE}'\nprintf '\\033[31mred\\n'")
        await page.fill('input[name="reason"]', "show me the output")
        await page.click('#job-form button[type="submit"]')
        result = page.locator(f'tr[data-result="{machine.agent_id}"]')
        await result.locator(".badge", has_text="succeeded").wait_for()  # from the live feed
        output = await result.locator("pre.output").text_content()
        assert output is not None and HOSTILE in output and "\x1b" not in output
        assert await page.locator("#job-results img").count() == 0
        await page.screenshot(path=str(SHOTS / "job-results.png"), full_page=True)

        await page.goto(broker.url + "/#machines")
        await page.get_by_role("button", name=f"Details of {os.uname().nodename}").first.click()
        details = page.locator(f'tr[data-details="{machine.agent_id}"]')
        await details.get_by_text(os.uname().release).wait_for()
        await details.get_by_role("textbox").fill("Namur office, Ground floor")
        await details.get_by_role("button", name="Save groups").click()
        await page.locator("#machines-group option", has_text="Namur office").wait_for(
            state="attached"
        )
        await page.screenshot(path=str(SHOTS / "machine-details.png"), full_page=True)
        assert problems == []
    desk = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        rows = desk.client.get("/api/v1/agents").json()
    finally:
        desk.close()
    assert next(r for r in rows if r["id"] == machine.agent_id)["groups"] == [
        "Ground floor",
        "Namur office",
    ]


async def test_a_technician_has_no_jobs_page(pc: tuple[Broker, Machine]) -> None:
    broker, _ = pc
    async with chromium() as browser:
        page, problems = await logged_in_page(browser, broker, TECH, TECH_PW)
        await page.goto(broker.url + "/#jobs")
        await page.reload()
        await page.locator("#view-machines").wait_for()  # sent back to the machines
        assert await page.locator('a[data-view="jobs"]').is_hidden()
        assert await page.locator("#view-jobs").is_hidden()
        assert problems == []


async def test_a_job_cancelled_after_its_approval_reads_cancelled(
    pc: tuple[Broker, Machine],
) -> None:
    """Approved (one admin suffices here) while its PC is off, then cancelled from
    the page: nothing is pending, and the job reads cancelled, not done, live and
    after a reload."""
    broker, machine = pc
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        stop(machine, admin)
        made = create(
            admin, targets=[machine.agent_id], action="script", script="true", reason="not now"
        )
        assert made["state"] == "running"
        async with chromium() as browser:
            page, problems = await logged_in_page(browser, broker, ADMIN, ADMIN_PW)
            page.set_default_timeout(30_000)
            await page.goto(broker.url + "/#jobs")
            await page.reload()
            await page.locator("#live[data-state=live]").wait_for()
            row = page.locator(f'tr[data-job="{made["id"]}"]')
            await row.locator(".badge", has_text="running").wait_for()
            await row.get_by_role("button", name="Cancel").click()
            await page.locator("#confirm-ok", has_text="Cancel the job").click()
            await row.locator(".badge", has_text="cancelled").wait_for()
            assert await row.get_by_role("button", name="Cancel").count() == 0
            await page.reload()
            await page.locator("#live[data-state=live]").wait_for()
            await row.locator(".badge", has_text="cancelled").wait_for()
            assert problems == []
    finally:
        start(machine, admin)
        admin.close()


async def test_a_cancelled_job_its_pc_had_reads_done_once_it_answers(
    pc: tuple[Broker, Machine], tmp_path: Path
) -> None:
    """Cancelled while its PC runs it: it reads cancelled, then, once the PC answers
    late (its result kept), done, as the broker says (docs/jobs.md), live on the page."""
    broker, machine = pc
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    began = tmp_path / "began"
    try:
        made = create(
            admin,
            targets=[machine.agent_id],
            action="script",
            script=f"touch {began}; sleep 4",
            reason="runs a while",
        )
        async with chromium() as browser:
            page, problems = await logged_in_page(browser, broker, ADMIN, ADMIN_PW)
            page.set_default_timeout(30_000)
            await page.goto(broker.url + "/#jobs")
            await page.reload()
            await page.locator("#live[data-state=live]").wait_for()
            row = page.locator(f'tr[data-job="{made["id"]}"]')
            await asyncio.to_thread(wait_for, began.exists, 30, "the PC to run the job")
            await row.get_by_role("button", name="Cancel").click()
            await page.locator("#confirm-ok", has_text="Cancel the job").click()
            await row.locator(".badge", has_text="cancelled").wait_for()
            await row.locator(".badge", has_text="done").wait_for()  # the late answer
            assert result_of(admin, made["id"], machine.agent_id)["state"] == "succeeded"
            assert admin.client.get(f"/api/v1/jobs/{made['id']}").json()["state"] == "done"
            assert problems == []
    finally:
        admin.close()
