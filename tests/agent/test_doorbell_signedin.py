"""The idle machine service keeps the broker's "signed in" fresh (``doorbellfresh.py``).

A real Unix user's session helper connecting to the idle doorbell (``run --system
--idle doorbell``) is parked, and the broker's agent list (what the technician's
console shows) names that user within seconds, with no full agent started; a full
agent woken then reports the same; the helper's hang-up (a logout) clears it, again
without a wake. Real broker, real processes."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest
from machinekit import CAN_RUN, WHY_NOT, enroll_system, local_users, passable_folder
from test_doorbell_machine import ENDED, DoorbellMachine

from harness import (
    TECH,
    TECH_PW,
    Broker,
    Fleet,
    log_mark,
    log_since,
    online,
    wait_for,
)

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
USER = "ahdoorbl"
WOKEN = "starting the full agent"
# The row's fields that follow who is signed in (console/api/fleet.py's agent_row).
SIGNED_IN = ("signed_in", "screen", "screen_problem", "desktop", "monitors")


def row(broker: Broker, agent_id: str) -> dict[str, Any]:
    """The PC as the technician's console lists it."""
    return next(a for a in broker.agents(TECH, TECH_PW) if a["id"] == agent_id)


def seen(broker: Broker, agent_id: str) -> dict[str, Any]:
    found = row(broker, agent_id)
    return {name: found[name] for name in SIGNED_IN}


def test_a_login_and_a_logout_while_idle_reach_the_console_without_a_wake(
    staffed: Fleet,
) -> None:
    broker = staffed.brokers[0]
    with local_users(USER), passable_folder() as root:
        machine = DoorbellMachine(root, enroll_system(broker, root / "machine"))
        helper: subprocess.Popen[bytes] | None = None
        try:
            machine.start_service()
            wait_for(lambda: machine.said(0, ENDED), 40, "the first full agent to end")
            wait_for(lambda: machine.said(0, "doorbell connected"), 30, "the doorbell")
            wait_for(lambda: online(broker, machine.agent_id), 10, "online by the doorbell")
            assert row(broker, machine.agent_id)["signed_in"] is None
            # the user logs in: their session helper connects to the idle doorbell
            mark = log_mark(machine.log)
            argv = machine.as_user(
                USER, "-m", "allowhelp.agent.cli", "session", "--prompt", "none",
                "--config", str(machine.config),
            )  # fmt: skip
            with (root / "helper.log").open("ab") as out:
                helper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            wait_for(
                lambda: row(broker, machine.agent_id)["signed_in"] == USER,
                15,
                "the console to show the user signed in",
            )
            idle = seen(broker, machine.agent_id)
            said = log_since(machine.log, mark)
            assert "a session helper waits" in said and "rings in again" in said
            assert WOKEN not in said, said  # parked, not woken
            assert row(broker, machine.agent_id)["online"]
            # a full agent woken now (the CLI's status request wakes it) says the same
            woke = log_mark(machine.log)
            assert machine.signed_in_here() == USER
            wait_for(lambda: machine.said(woke, ENDED), 30, "the woken full agent to end")
            assert seen(broker, machine.agent_id) == idle  # its tunnel's Hello: no change
            wait_for(lambda: machine.said(woke, "a session helper waits"), 20, "parked again")
            # the user logs out: the parked helper hangs up
            gone = log_mark(machine.log)
            helper.send_signal(signal.SIGTERM)
            assert helper.wait(15) is not None
            wait_for(
                lambda: row(broker, machine.agent_id)["signed_in"] is None,
                15,
                "the console to show nobody signed in",
            )
            said = log_since(machine.log, gone)
            assert "a parked session helper hung up" in said and WOKEN not in said, said
            nobody = row(broker, machine.agent_id)
            assert nobody["online"] and nobody["screen"] == "none"
            assert nobody["screen_problem"] == "nobody signed in"
        finally:
            if helper is not None and helper.poll() is None:
                helper.terminate()
                helper.wait(15)
            machine.stop()
        assert "Traceback" not in machine.log.read_text()
