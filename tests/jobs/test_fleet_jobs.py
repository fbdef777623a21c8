"""Fleet jobs for real: a broker, two machine services as root (one opted in, one not).

Scripts run as root on the PC that opted in and nowhere else; a packages job
installs and removes a tiny .deb from a local apt repository the test builds
(no network); a PC that was offline catches up; an expired job is not run; a
technician is refused; everything lands in the audit chain and in the PC's own
history.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jobkit import (
    audit,
    build_local_repo,
    create,
    enrolled_machine,
    history,
    job,
    opt_in,
    result_of,
    start,
    stop,
)
from machinekit import CAN_RUN, WHY_NOT, Machine, local_users, passable_folder
from roguekit import rogue_agent_says

from allowhelp.protocol.control import JobResult, JobRun
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Desk,
    Fleet,
    audit_locked,
    log_mark,
    log_since,
    staffed_broker,
    wait_for,
)

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
TEST_PACKAGE = "allowhelp-fleet-test-hello"


@dataclass
class Pcs:
    root: Path
    fleet: Fleet
    admin: Desk
    second: Desk  # another admin: two agree to a job, or to lowering that rule
    opted: Machine
    plain: Machine
    apt_config: Path


@pytest.fixture(scope="module")
def pcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcs]:
    root = tmp_path_factory.mktemp("jobs")
    with staffed_broker(root) as fleet:
        broker = fleet.brokers[0]
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        broker.add_user("second-admin", "second-admin-password-1", role="admin")
        second = Desk.login(broker, "second-admin", "second-admin-password-1")
        apt_config = build_local_repo(root / "aptrepo", TEST_PACKAGE)
        opted = enrolled_machine(broker, root, "opted")
        plain = enrolled_machine(broker, root, "plain")
        opt_in(opted.config, ("packages", "script"), str(apt_config))
        try:
            start(opted, admin)
            start(plain, admin)
            yield Pcs(root, fleet, admin, second, opted, plain, apt_config)
        finally:
            opted.stop()
            plain.stop()
            admin.close()
            second.close()
            subprocess.run(["dpkg", "--purge", TEST_PACKAGE], capture_output=True, check=False)


def admins_must_agree(pcs: Pcs, count: int) -> None:
    """``require_approval``: raised by one admin; lowered when a second asks too."""
    first = pcs.admin.client.put("/api/v1/policy", json={"require_approval": count})
    if count == 1 and first.status_code == 202:
        assert first.json()["lowering_asked_by"] == ADMIN
        first = pcs.second.client.put("/api/v1/policy", json={"require_approval": count})
    assert first.status_code == 200, first.text
    assert pcs.admin.client.get("/api/v1/policy").json()["require_approval"] == count


def awaiting_approval(pcs: Pcs, script: str, reason: str) -> dict[str, Any]:
    """A script job for the opted-in PC, made while two admins must agree."""
    admins_must_agree(pcs, 2)
    try:
        made = create(
            pcs.admin, targets=[pcs.opted.agent_id], action="script", script=script, reason=reason
        )
    finally:
        admins_must_agree(pcs, 1)
    assert made["state"] == "awaiting_approval"
    return made


def test_a_script_runs_as_root_only_on_the_pc_that_opted_in(pcs: Pcs) -> None:
    tally = pcs.root / "tally"
    script = f"#!/bin/sh\nid -u\necho ran >> {tally}\necho 'done \x1b[31mred'\n"
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id, pcs.plain.agent_id],
        action="script",
        script=script,
        reason="check who runs it",
    )
    assert made["state"] == "running"
    ran = result_of(pcs.admin, made["id"], pcs.opted.agent_id)
    refused = result_of(pcs.admin, made["id"], pcs.plain.agent_id)
    assert ran["state"] == "succeeded" and ran["exit_code"] == 0, ran
    assert ran["output"].splitlines()[0] == "0"  # root
    assert "\x1b" not in ran["output"] and "done [31mred" in ran["output"]
    assert refused["state"] == "refused", refused
    assert "no fleet policy" in refused["output"]
    assert tally.read_text() == "ran\n"  # once: the PC without the opt-in ran nothing
    assert job(pcs.admin, made["id"])["state"] == "done"
    listed = next(j for j in pcs.admin.client.get("/api/v1/jobs").json() if j["id"] == made["id"])
    assert listed["state"] == "done" and listed["counts"] == {"succeeded": 1, "refused": 1}
    assert "script" not in listed  # the list is light; GET /jobs/{id} has the script

    records = [r for r in audit(pcs.admin.broker) if r["target"] == made["id"]]
    created = next(r for r in records if r["type"] == "job.created")
    assert created["actor"] == f"admin:{ADMIN}"
    assert created["details"]["reason"] == "check who runs it"
    assert created["details"]["script_sha256"] == hashlib.sha256(script.encode()).hexdigest()
    assert set(created["details"]["targets"]) == {pcs.opted.agent_id, pcs.plain.agent_id}
    results = {r["details"]["agent_id"]: r for r in records if r["type"] == "job.result"}
    assert results[pcs.opted.agent_id]["details"]["exit_code"] == 0
    assert (
        results[pcs.opted.agent_id]["details"]["output_sha256"]
        == hashlib.sha256(ran["output"].encode()).hexdigest()
    )
    assert results[pcs.plain.agent_id]["details"]["state"] == "refused"

    said = [e for e in history(pcs.opted) if e.get("id") == made["id"]]
    assert said and said[-1]["state"] == "succeeded" and said[-1]["by"] == ADMIN
    assert (pcs.opted.config / "history.jsonl").stat().st_mode & 0o777 == 0o644
    assert (pcs.opted.config / "jobs.json").stat().st_mode & 0o777 == 0o600
    refused_here = [e for e in history(pcs.plain) if e.get("id") == made["id"]]
    assert refused_here and refused_here[-1]["state"] == "refused"


def test_a_failing_script_says_its_exit_code_and_a_slow_one_is_stopped(pcs: Pcs) -> None:
    failing = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script="echo about to fail; exit 3",
        reason="exit codes",
    )
    slow = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"echo $$ > {pcs.root}/slow.pid; sleep 300",
        reason="timeouts",
        timeout=10,
    )
    failed = result_of(pcs.admin, failing["id"], pcs.opted.agent_id)
    assert failed["state"] == "failed" and failed["exit_code"] == 3
    assert "about to fail" in failed["output"]
    stopped = result_of(pcs.admin, slow["id"], pcs.opted.agent_id, timeout=40)
    assert stopped["state"] == "timed_out", stopped
    assert "ran out of time" in stopped["output"]
    pid = int((pcs.root / "slow.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # its process group was ended


def test_output_is_kept_bounded(pcs: Pcs) -> None:
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script="head -c 3000000 /dev/zero | tr '\\0' x; echo; echo THE-END",
        reason="a chatty script",
    )
    done = result_of(pcs.admin, made["id"], pcs.opted.agent_id)
    assert done["state"] == "succeeded"
    assert len(done["output"]) <= 8000
    assert done["output"].rstrip().endswith("THE-END")
    assert "were not kept" in done["output"]


def test_a_packages_job_installs_and_removes_from_a_local_repository(pcs: Pcs) -> None:
    installed = create(
        pcs.admin,
        targets=[pcs.opted.agent_id, pcs.plain.agent_id],
        action="packages",
        install=[TEST_PACKAGE],
        reason="newcomer's PC",
    )
    done = result_of(pcs.admin, installed["id"], pcs.opted.agent_id, timeout=120)
    assert done["state"] == "succeeded", done["output"]
    status = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status} ${Version}", TEST_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.stdout == "install ok installed 1.0"
    assert Path(f"/usr/share/{TEST_PACKAGE}/hello").read_text() == "hello from a fleet job\n"
    refused = result_of(pcs.admin, installed["id"], pcs.plain.agent_id)
    assert refused["state"] == "refused"

    removed = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="packages",
        remove=[TEST_PACKAGE],
        reason="leaver's PC",
    )
    gone = result_of(pcs.admin, removed["id"], pcs.opted.agent_id, timeout=120)
    assert gone["state"] == "succeeded", gone["output"]
    assert not Path(f"/usr/share/{TEST_PACKAGE}/hello").exists()
    said = [e for e in history(pcs.opted) if e.get("id") == installed["id"]]
    assert said[-1]["summary"] == f"installed {TEST_PACKAGE}"


def test_an_offline_pc_catches_up_and_an_expired_job_is_not_run(pcs: Pcs) -> None:
    stop(pcs.opted, pcs.admin)
    marker = pcs.root / "caught-up"
    never = pcs.root / "expired-ran"
    catch_up = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"touch {marker}",
        reason="while it was off",
    )
    expiring = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"touch {never}",
        reason="too late",
        expires_in=1,
    )
    expired = result_of(pcs.admin, expiring["id"], pcs.opted.agent_id, timeout=30)
    assert expired["state"] == "expired"
    assert job(pcs.admin, catch_up["id"])["results"][0]["state"] == "pending"
    start(pcs.opted, pcs.admin)
    done = result_of(pcs.admin, catch_up["id"], pcs.opted.agent_id)
    assert done["state"] == "succeeded" and marker.exists()
    time.sleep(0)  # the expired one was never sent: nothing to wait for
    assert not never.exists()
    assert not [e for e in history(pcs.opted) if e.get("id") == expiring["id"]]
    types = [r["type"] for r in audit(pcs.admin.broker) if r["target"] == expiring["id"]]
    assert types == ["job.created", "job.expired"]


def test_a_late_answer_to_a_job_that_expired_while_it_ran_is_kept(pcs: Pcs) -> None:
    """The job reached the PC in time and ran past its expiry: the broker gave up on
    it (``job.expired``), then the PC's real result came; it is audited (``late``)
    and shown, not dropped: the script ran as root, and the record says so."""
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script="sleep 8; echo finished-late",
        reason="a slow job",
        expires_in=3,
        timeout=60,
    )
    expired = result_of(pcs.admin, made["id"], pcs.opted.agent_id, timeout=30)
    assert expired["state"] == "expired"

    def answered() -> dict[str, Any] | None:
        row: dict[str, Any] = job(pcs.admin, made["id"])["results"][0]
        return row if row["state"] != "expired" else None

    late = wait_for(answered, 30, "the PC's late answer", step=0.2)
    assert late["state"] == "succeeded" and "finished-late" in late["output"]
    records = [r for r in audit(pcs.admin.broker) if r["target"] == made["id"]]
    assert [r["type"] for r in records] == ["job.created", "job.expired", "job.result"]
    assert records[-1]["details"]["late"] is True
    assert records[-1]["details"]["state"] == "succeeded"


def test_a_job_runs_once_even_when_the_pc_reconnects(pcs: Pcs) -> None:
    tally = pcs.root / "once"
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"echo x >> {tally}",
        reason="once",
    )
    assert result_of(pcs.admin, made["id"], pcs.opted.agent_id)["state"] == "succeeded"
    stop(pcs.opted, pcs.admin)
    start(pcs.opted, pcs.admin)
    again = create(
        pcs.admin, targets=[pcs.opted.agent_id], action="script", script="true", reason="sync"
    )
    assert result_of(pcs.admin, again["id"], pcs.opted.agent_id)["state"] == "succeeded"
    assert tally.read_text() == "x\n"


def test_groups_make_one_target(pcs: Pcs) -> None:
    for machine in (pcs.opted, pcs.plain):
        answer = pcs.admin.client.patch(
            f"/api/v1/agents/{machine.agent_id}", json={"groups": ["Namur office"]}
        )
        assert answer.status_code == 200, answer.text
    rows = pcs.admin.client.get("/api/v1/agents").json()
    assert all(r["groups"] == ["Namur office"] for r in rows if r["online"])
    made = create(
        pcs.admin,
        targets={"group": "Namur office"},
        action="script",
        script="echo namur",
        reason="every PC of the Namur office",
    )
    assert set(made["targets"]) == {pcs.opted.agent_id, pcs.plain.agent_id}
    assert result_of(pcs.admin, made["id"], pcs.opted.agent_id)["state"] == "succeeded"
    assert result_of(pcs.admin, made["id"], pcs.plain.agent_id)["state"] == "refused"
    bad = pcs.admin.client.post(
        "/api/v1/jobs",
        json={"targets": {"group": "Nowhere"}, "action": "script", "script": "true", "reason": "x"},
    )
    assert bad.status_code == 400 and "no machines" in bad.json()["message"]
    wrong = pcs.admin.client.patch(
        f"/api/v1/agents/{pcs.opted.agent_id}", json={"groups": ["<script>"]}
    )
    assert wrong.status_code == 400


def test_a_technician_is_refused(pcs: Pcs) -> None:
    tech = Desk.login(pcs.admin.broker, TECH, TECH_PW)
    waiting = awaiting_approval(pcs, "true", "technicians may not cancel it")
    try:
        cancel = tech.client.post(f"/api/v1/jobs/{waiting['id']}/cancel")
        assert cancel.status_code == 403
        assert job(pcs.admin, waiting["id"])["state"] == "awaiting_approval"
        policy = tech.client.put("/api/v1/policy", json={"require_approval": 1})
        assert policy.status_code == 403
        body = {
            "targets": [pcs.opted.agent_id],
            "action": "script",
            "script": f"touch {pcs.root}/tech-ran",
            "reason": "technicians may not",
        }
        assert tech.client.post("/api/v1/jobs", json=body).status_code == 403
        assert tech.client.get("/api/v1/jobs").status_code == 403
        patched = tech.client.patch(
            f"/api/v1/agents/{pcs.opted.agent_id}", json={"groups": ["mine"]}
        )
        assert patched.status_code == 403
    finally:
        tech.close()
        pcs.admin.client.post(f"/api/v1/jobs/{waiting['id']}/cancel")
    assert not (pcs.root / "tech-ran").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "script", "script": "true", "reason": "x"}, "targets"),
        ({"action": "rm", "script": "true", "reason": "x"}, "action"),
        ({"action": "script", "script": "true", "reason": ""}, "reason"),
        ({"action": "script", "script": "", "reason": "x"}, "script"),
        ({"action": "packages", "install": ["-oDebug=1"], "reason": "x"}, "package"),
        ({"action": "packages", "install": ["vlc; rm -rf /"], "reason": "x"}, "package"),
        ({"action": "script", "script": "x" * 9000, "reason": "x"}, "script"),
        ({"action": "script", "script": "true", "reason": "x", "timeout": 5}, "timeout"),
        ({"action": "script", "script": "true", "reason": "x", "expires_in": 0}, "expires_in"),
        ({"action": "script", "script": "true", "reason": "x", "run_as": "bob"}, "unknown"),
    ],
)
def test_bad_jobs_are_refused_with_a_clear_error(
    pcs: Pcs, body: dict[str, object], message: str
) -> None:
    if message != "targets":
        body = {"targets": [pcs.opted.agent_id], **body}
    answer = pcs.admin.client.post("/api/v1/jobs", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["message"]


def test_a_rogue_agent_cannot_report_for_another_pc_nor_send_jobs(pcs: Pcs) -> None:
    broker = pcs.admin.broker
    made = create(
        pcs.admin,
        targets=[pcs.plain.agent_id],
        action="script",
        script="true",
        reason="not the rogue's",
    )
    assert result_of(pcs.admin, made["id"], pcs.plain.agent_id)["state"] == "refused"
    rogue = pcs.fleet.agent("rogue")
    assert rogue.enroll(broker.token()).returncode == 0
    lines = [
        JobResult(
            job_id=made["id"],
            state="succeeded",
            exit_code=0,
            output="forged",
            started=1.0,
            finished=2.0,
        ).encode(),
        JobRun(job_id=made["id"], payload="e30=", signature="x").encode(),
    ]
    me = f"agent={rogue.agent_id}"
    judged = [
        f"{me} reported on job {made['id']}, which is not its own",
        f"{me} sent a job.run, which agents may not send",
    ]
    mark = log_mark(broker.log)

    attack = rogue_agent_says(
        rogue.config, lines, lambda: judged[-1] in log_since(broker.log, mark), "the judgement"
    )
    asyncio.run(asyncio.wait_for(attack, 30))
    said = log_since(broker.log, mark)
    assert all(line in said for line in judged), said
    result = job(pcs.admin, made["id"])["results"][0]
    assert result["state"] == "refused" and result["output"] != "forged"
    assert len(result["output"]) > 0


def test_a_job_changed_in_the_database_is_never_sent(pcs: Pcs) -> None:
    """Someone who can write the broker's database but does not hold its key: a
    job's script rewritten after it was made, and a job waiting for a second admin
    set to need none. Neither reaches the PC; each is on the record as tampered."""
    broker = pcs.admin.broker
    stop(pcs.opted, pcs.admin)
    marker = pcs.root / "tampered-ran"
    edited = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script="echo harmless",
        reason="edited afterwards",
    )
    unapproved = awaiting_approval(pcs, f"touch {marker}", "approved by nobody")
    with sqlite3.connect(broker.data / "broker.sqlite3") as db:
        db.execute("UPDATE jobs SET script = ? WHERE id = ?", (f"touch {marker}", edited["id"]))
        db.execute("UPDATE jobs SET approvals_needed = 0 WHERE id = ?", (unapproved["id"],))
    start(pcs.opted, pcs.admin)
    wait_for(
        lambda: (
            {r["target"] for r in audit(broker) if r["type"] == "job.tampered"}
            >= {edited["id"], unapproved["id"]}
        ),
        30,
        "both jobs on the record as tampered",
    )
    for made in (edited, unapproved):
        assert job(pcs.admin, made["id"])["results"][0]["state"] == "pending"
        assert f"job={made['id']} sent" not in broker.log.read_text()
    assert not marker.exists()
    second = pcs.admin.client.post(f"/api/v1/jobs/{unapproved['id']}/approve")
    assert second.status_code in (403, 409), second.text  # nothing approves it back in


def test_a_cancelled_job_reaches_no_pc_and_cannot_be_approved(pcs: Pcs) -> None:
    """Cancelled while its PC was off: the PC comes back and never gets it; a job
    cancelled while it waited for a second admin can no longer be approved."""
    broker = pcs.admin.broker
    stop(pcs.opted, pcs.admin)
    marker = pcs.root / "cancelled-ran"
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"touch {marker}",
        reason="changed my mind",
    )
    assert made["approved_by"] == [] and made["state"] == "running"  # approved: one admin
    cancelled = pcs.admin.client.post(f"/api/v1/jobs/{made['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["results"][0]["state"] == "cancelled"
    # cancelled after its approval: cancelled too, not "done" (detail, list, the page's feed)
    assert cancelled.json()["state"] == job(pcs.admin, made["id"])["state"] == "cancelled"
    listed = {j["id"]: j for j in pcs.admin.client.get("/api/v1/jobs").json()}
    assert listed[made["id"]]["state"] == "cancelled"
    assert listed[made["id"]]["counts"] == {"cancelled": 1}
    again = pcs.admin.client.post(f"/api/v1/jobs/{made['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "job_over"
    waiting = awaiting_approval(pcs, f"touch {marker}", "not after all")
    assert pcs.admin.client.post(f"/api/v1/jobs/{waiting['id']}/cancel").status_code == 200
    assert job(pcs.admin, waiting["id"])["state"] == "cancelled"
    late = pcs.second.client.post(f"/api/v1/jobs/{waiting['id']}/approve")
    assert late.status_code == 409 and late.json()["error"] == "job_cancelled", late.text
    start(pcs.opted, pcs.admin)
    check = create(
        pcs.admin, targets=[pcs.opted.agent_id], action="script", script="true", reason="fence"
    )
    assert result_of(pcs.admin, check["id"], pcs.opted.agent_id)["state"] == "succeeded"
    assert not marker.exists()
    for cancelled_job in (made, waiting):
        assert f"job={cancelled_job['id']} sent" not in broker.log.read_text()
        types = [r["type"] for r in audit(broker) if r["target"] == cancelled_job["id"]]
        assert types == ["job.created", "job.cancelled"]


def test_with_two_admins_required_a_job_waits_for_the_second(pcs: Pcs) -> None:
    broker = pcs.admin.broker
    admins_must_agree(pcs, 2)
    marker = pcs.root / "approved-ran"
    try:
        made = create(
            pcs.admin,
            targets=[pcs.opted.agent_id],
            action="script",
            script=f"touch {marker}",
            reason="needs two",
        )
        assert made["state"] == "awaiting_approval"
        own = pcs.admin.client.post(f"/api/v1/jobs/{made['id']}/approve")
        assert own.status_code == 403, own.text
        assert job(pcs.admin, made["id"])["results"][0]["state"] == "pending"
        assert f"job={made['id']} sent" not in broker.log.read_text()
        assert not marker.exists()
        approved = pcs.second.client.post(f"/api/v1/jobs/{made['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["approved_by"] == ["second-admin"]
        again = pcs.second.client.post(f"/api/v1/jobs/{made['id']}/approve")
        assert again.status_code == 409
        assert result_of(pcs.admin, made["id"], pcs.opted.agent_id)["state"] == "succeeded"
        assert marker.exists()
        records = [r for r in audit(broker) if r["target"] == made["id"]]
        assert [r["type"] for r in records] == ["job.created", "job.approved", "job.result"]
        assert records[0]["details"]["approvals_needed"] == 1
        assert records[1]["actor"] == "admin:second-admin"
    finally:
        admins_must_agree(pcs, 1)
    bad = pcs.admin.client.put("/api/v1/policy", json={"require_approval": 3})
    assert bad.status_code == 400


def test_one_admin_alone_cannot_lower_two_admin_approval(pcs: Pcs) -> None:
    """Lowering ``require_approval`` from 2 is a request until a second admin asks
    the same: one admin cannot lower it, make a job alone and raise it again."""
    broker = pcs.admin.broker
    admins_must_agree(pcs, 2)
    try:
        for _ in range(2):  # asking twice is still one admin
            asked = pcs.admin.client.put("/api/v1/policy", json={"require_approval": 1})
            assert asked.status_code == 202, asked.text
            assert asked.json() == {"require_approval": 2, "lowering_asked_by": ADMIN}
        policy = pcs.admin.client.get("/api/v1/policy").json()
        assert policy["require_approval"] == 2 and policy["lowering_asked_by"] == ADMIN
        made = create(
            pcs.admin, targets=[pcs.plain.agent_id], action="script", script="true", reason="x"
        )
        assert made["state"] == "awaiting_approval"  # the request lowered nothing
        agreed = pcs.second.client.put("/api/v1/policy", json={"require_approval": 1})
        assert agreed.status_code == 200 and agreed.json() == {"require_approval": 1}
        assert pcs.admin.client.get("/api/v1/policy").json()["lowering_asked_by"] is None
        said = [r for r in audit(broker) if r["type"].startswith("auth.policy")][-3:]
        assert [(r["type"], r["actor"]) for r in said] == [
            ("auth.policy.asked", f"admin:{ADMIN}"),
            ("auth.policy.asked", f"admin:{ADMIN}"),
            ("auth.policy.changed", "admin:second-admin"),
        ]
        assert said[-1]["details"] == {"require_approval": 1, "asked_by": ADMIN}
    finally:
        admins_must_agree(pcs, 1)


def test_an_admin_account_made_after_the_job_cannot_approve_it(pcs: Pcs) -> None:
    """One admin asks for a job, makes a second admin account and approves with it:
    refused, on the record, and the job still waits. The approver must have existed
    when the job was asked for."""
    broker = pcs.admin.broker
    waiting = awaiting_approval(pcs, "true", "approved by my other self")
    made = pcs.admin.client.post(
        "/api/v1/users",
        json={"username": "late-admin", "role": "admin", "password": "late-admin-password-1"},
    )
    assert made.status_code == 201, made.text
    late = Desk.login(broker, "late-admin", "late-admin-password-1")
    try:
        refused = late.client.post(f"/api/v1/jobs/{waiting['id']}/approve")
    finally:
        late.close()
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "approver_too_new"
    assert "made after this job" in refused.json()["message"]
    after = job(pcs.admin, waiting["id"])
    assert after["state"] == "awaiting_approval" and after["approved_by"] == []
    records = [r for r in audit(broker) if r["target"] == waiting["id"]]
    assert [r["type"] for r in records] == ["job.created", "job.approval.refused"]
    assert records[1]["actor"] == "admin:late-admin"
    assert records[1]["details"]["why"] == "the approving account was made after the job"
    assert records[1]["details"]["account_created"] > records[1]["details"]["job_created"]
    assert f"job={waiting['id']} sent" not in broker.log.read_text()
    assert pcs.admin.client.post(f"/api/v1/jobs/{waiting['id']}/cancel").status_code == 200


def test_the_machine_service_reports_its_inventory(pcs: Pcs) -> None:
    expected = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    installed = [line[4:].strip() for line in expected if line.startswith("ii")]

    def reported() -> dict[str, Any] | None:
        answer = pcs.admin.client.get(f"/api/v1/agents/{pcs.plain.agent_id}/inventory")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found if found["inventory"] else None

    details = wait_for(reported, 30, "the inventory")
    inventory = details["inventory"]
    assert inventory["kernel"] == os.uname().release
    assert inventory["memory_total"] > 0 and inventory["disk_total"] > inventory["disk_free"] > 0
    assert abs(inventory["last_boot"] - float(_btime())) < 2
    assert inventory["package_count"] == len(installed) > 100
    assert inventory["packages"] == installed  # every part gathered, in order
    assert sum(len(line) + 1 for line in installed) > 11000  # more than one part


def _btime() -> str:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return line.split()[1]
    raise AssertionError("no btime")


def test_the_signed_in_user_is_told_afterwards(pcs: Pcs) -> None:
    user = "ahjobsuser"
    broker = pcs.admin.broker
    with local_users(user), passable_folder() as root:
        machine = enrolled_machine(broker, root, "desk")
        opt_in(machine.config, ("packages", "script"), str(pcs.apt_config))
        try:
            start(machine, pcs.admin)
            machine.start_helper(user)
            made = create(
                pcs.admin,
                targets=[machine.agent_id],
                action="packages",
                install=[TEST_PACKAGE],
                reason="the user asked for it",
            )
            done = result_of(pcs.admin, made["id"], machine.agent_id, timeout=120)
            assert done["state"] == "succeeded", done["output"]
            at = time.strftime("%H:%M", time.localtime(done["finished"]))
            told = f"notice: IT installed {TEST_PACKAGE} on this PC at {at}"
            log = root / f"helper-{user}.log"
            wait_for(lambda: told in log.read_text(), 20, "the user to be told")
            # and the user (not root) can read what IT did on this PC
            listed = subprocess.run(
                machine.as_user(
                    user, "-m", "allowhelp.agent.cli", "history", "--config", str(machine.config)
                ),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert listed.returncode == 0, listed.stderr
            assert f"IT ({ADMIN}) installed {TEST_PACKAGE}: succeeded" in listed.stdout
            assert "the user asked for it" in listed.stdout
        finally:
            machine.stop()
            subprocess.run(["dpkg", "--purge", TEST_PACKAGE], capture_output=True, check=False)


def test_a_job_cut_short_by_a_service_stop_is_not_run_again(pcs: Pcs) -> None:
    started = pcs.root / "cut.pid"
    tally = pcs.root / "cut.tally"
    made = create(
        pcs.admin,
        targets=[pcs.opted.agent_id],
        action="script",
        script=f"echo x >> {tally}; echo $$ > {started}; sleep 300",
        reason="a long one",
    )
    wait_for(lambda: started.exists() and started.read_text().strip(), 30, "the job to start")
    pid = int(started.read_text())
    stop(pcs.opted, pcs.admin)
    assert not Path(f"/proc/{pid}").exists()  # its processes ended with the service
    start(pcs.opted, pcs.admin)
    result = result_of(pcs.admin, made["id"], pcs.opted.agent_id)
    assert result["state"] == "failed" and "interrupted" in result["output"], result
    assert tally.read_text() == "x\n"


def test_no_job_without_its_audit_record(pcs: Pcs) -> None:
    marker = pcs.root / "unaudited-ran"
    before = {j["id"] for j in pcs.admin.client.get("/api/v1/jobs").json()}
    with audit_locked(pcs.admin.broker):
        answer = pcs.admin.client.post(
            "/api/v1/jobs",
            json={
                "targets": [pcs.opted.agent_id],
                "action": "script",
                "script": f"touch {marker}",
                "reason": "the audit is down",
            },
        )
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "audit_unavailable"
    after = {j["id"] for j in pcs.admin.client.get("/api/v1/jobs").json()}
    assert after == before  # never stored, so never sent
    # the PC is online and runs the next job: had the first been sent, it would have run too
    made = create(
        pcs.admin, targets=[pcs.opted.agent_id], action="script", script="true", reason="next"
    )
    assert result_of(pcs.admin, made["id"], pcs.opted.agent_id)["state"] == "succeeded"
    assert not marker.exists()


def test_a_job_needs_the_csrf_header(pcs: Pcs) -> None:
    body = {"targets": [pcs.opted.agent_id], "action": "script", "script": "true", "reason": "x"}
    answer = pcs.admin.client.post("/api/v1/jobs", json=body, headers={"X-CSRF-Token": ""})
    assert answer.status_code == 403 and answer.json()["error"] == "csrf"
    foreign = pcs.admin.client.post(
        "/api/v1/jobs", json=body, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
