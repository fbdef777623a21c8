"""``run --system --idle doorbell``: the machine service idles on a doorbell too.

The doorbell holds the helper socket (SOCK_SEQPACKET) and hands it to the full
agent it starts. A CLI client connecting wakes the full agent; a session helper
does not: the doorbell parks it (``doorbellpark.py``) and hands it to the next full
agent, which takes it before its tunnel's Hello. The full agent ends ``--linger``
after it was last needed, helpers connected or not; they come back to the doorbell.
A package upgrade's mark makes the idle doorbell re-execute itself. Real local
user, real broker, real processes."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from jobkit import create, opt_in, result_of
from machinekit import CAN_RUN, WHY_NOT, Machine, enroll_system, local_users, passable_folder

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    log_mark,
    log_since,
    online,
    wait_for,
)

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
USER = "ahbellag"
ENDED = "is idle and ended"


@dataclass
class DoorbellMachine(Machine):
    run_flags: tuple[str, ...] = ("--idle", "doorbell", "--linger", "2")

    @property
    def log(self) -> Path:
        return self.root / "service.log"

    def said(self, since: int, text: str) -> bool:
        return text in log_since(self.log, since)


def full_agent_pids(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"starting the full agent \(.*?\): pid (\d+)", text)]


def test_the_machine_doorbell_wakes_for_a_helper_and_idles_after_it(
    staffed: Fleet, tmp_path: Path
) -> None:
    broker: Broker = staffed.brokers[0]
    with local_users(USER), passable_folder() as root:
        machine = DoorbellMachine(root, enroll_system(broker, root / "machine"))
        try:
            machine.start_service()
            wait_for(lambda: machine.said(0, ENDED), 40, "the first full agent to end")
            wait_for(lambda: machine.said(0, "doorbell connected"), 30, "the doorbell")
            wait_for(lambda: online(broker, machine.agent_id), 10, "online by the doorbell")
            first = full_agent_pids(machine.log.read_text())
            assert first and not Path(f"/proc/{first[0]}").exists()  # reaped: no zombie
            # the user's session helper connects (the kit's status request, a CLI
            # client, wakes the full agent to see it signed in)
            mark = log_mark(machine.log)
            machine.start_helper(USER)
            assert machine.said(mark, "a local client on the machine socket")
            assert machine.pending(USER) == []  # the CLI reaches it too, as the user
            # nobody is helped: the full agent ends although the helper stays connected,
            # and the helper, back at the doorbell, is parked again
            wait_for(lambda: machine.said(mark, ENDED), 30, "the full agent to end")
            parked = log_mark(machine.log)
            wait_for(
                lambda: machine.said(parked, "a session helper waits"), 20, "the helper parked"
            )
            assert "starting the full agent" not in log_since(machine.log, parked)
            # a technician asks for the user's shell: the ring starts the full agent with
            # the parked helper, so the prompt reaches the user's session at once
            desk = Desk.login(broker, TECH, TECH_PW)
            try:
                answer = desk.request(machine.agent_id, kind="shell", reason="parked helper")
                assert answer.status_code == 201, answer.text
                session_id = answer.json()["id"]
                wait_for(
                    lambda: any(p["session_id"] == session_id for p in machine.pending(USER)),
                    15,
                    "the prompt in the user's session",
                )
                done = machine.cli(USER, "allow", session_id)
                assert done.returncode == 0, done.stderr
                desk.wait_state(session_id, "active")
                ended = desk.client.post(f"/api/v1/sessions/{session_id}/end")
                assert ended.status_code == 200, ended.text
            finally:
                desk.close()
            helper_mark = log_mark(machine.log)
            machine.stop_helper(USER)
            wait_for(lambda: machine.said(helper_mark, ENDED), 30, "the full agent to end")
            assert online(broker, machine.agent_id)
            # a package upgrade's mark: the idle doorbell becomes the new version
            mark = log_mark(machine.log)
            pid = machine.service.pid if machine.service is not None else 0
            (machine.config / "upgraded").write_text("")
            wait_for(lambda: machine.said(mark, "doorbell restarts"), 20, "the re-exec")
            wait_for(lambda: machine.said(mark, "doorbell running"), 20, "the new doorbell")
            wait_for(lambda: not (machine.config / "upgraded").exists(), 10, "the mark spent")
            assert machine.service is not None and machine.service.pid == pid
            assert machine.service.poll() is None
            wait_for(lambda: machine.said(mark, "doorbell connected"), 30, "the doorbell again")
        finally:
            if machine.service is not None and machine.service.poll() is None:
                machine.service.send_signal(signal.SIGTERM)
                assert machine.service.wait(20) == 0
            machine.stop()
        assert "Traceback" not in machine.log.read_text()


def test_a_fleet_job_rings_the_machine_doorbell(staffed: Fleet) -> None:
    broker: Broker = staffed.brokers[0]
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    with passable_folder() as root:
        machine = DoorbellMachine(root, enroll_system(broker, root / "machine"))
        opt_in(machine.config, ("script",))
        try:
            machine.start_service()
            wait_for(lambda: machine.said(0, ENDED), 40, "the first full agent to end")
            wait_for(lambda: machine.said(0, "doorbell connected"), 30, "the doorbell")
            mark = log_mark(machine.log)
            made = create(
                admin,
                targets=[machine.agent_id],
                action="script",
                script="#!/bin/sh\necho rung-$((6*7))\n",
                reason="wake it",
            )
            ran = result_of(admin, made["id"], machine.agent_id)
            assert ran["state"] == "succeeded" and "rung-42" in ran["output"], ran
            assert machine.said(mark, "the broker rings (job.run)")
            wait_for(lambda: machine.said(mark, ENDED), 30, "the full agent to end after it")
            assert online(broker, machine.agent_id)
        finally:
            machine.stop()
            admin.close()
        assert "Traceback" not in machine.log.read_text()
