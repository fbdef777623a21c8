"""``monitor: all`` goes only to an agent that said it shows every monitor at once.

An agent older than "all monitors" reports its monitors but would refuse ``all``
only after the person at the PC clicked Allow (or, older still, take it for a
monitor's name). The broker refuses it first, as it refuses a monitor the PC did
not report: 409 ``monitor_unavailable``, audited as a request that ended at once.

The older agent here is an enrolled agent's own key saying an older hello (no
``all_monitors``) on the real control channel, through the real broker; the
current agent is the real one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from roguekit import rogue_agent_says

from allowhelp.broker.sessions.screenchoice import TOO_OLD_FOR_ALL
from allowhelp.protocol.control import Hello
from harness import TECH, TECH_PW, Desk, running_fleet, wait_for

MONITORS = "left 640x480+0+0 primary;right 640x480+640+0"


def _row(desk: Desk, agent_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = desk.client.get("/api/v1/agents").json()
    return next(r for r in rows if r["id"] == agent_id)


def test_all_monitors_is_refused_to_an_older_agent_before_the_pc_is_asked(
    tmp_path: Path,
) -> None:
    with running_fleet(tmp_path) as (fleet, broker, current):
        older = fleet.agent("older")
        assert older.enroll(broker.token()).returncode == 0
        desk = Desk.login(broker, TECH, TECH_PW)
        try:
            # the real, current agent says it can (the console offers "All monitors")
            assert _row(desk, current.agent_id)["all_monitors"] is True
            hello = Hello(
                hostname="old-pc",
                os="Debian 12",
                user="ann",
                version="0.1.0",
                screen="x11",
                monitors=MONITORS,
            )
            answers: dict[str, Any] = {}

            def judged() -> bool:
                row = _row(desk, older.agent_id)
                if not (row["online"] and len(row["monitors"]) == 2):
                    return False
                answers["row"] = row
                answers["all"] = desk.request(
                    older.agent_id, kind="screen", reason="all at once", monitor="all"
                )
                answers["one"] = desk.request(
                    older.agent_id, kind="screen", reason="the left one", monitor="left"
                )
                return True

            asyncio.run(
                asyncio.wait_for(
                    rogue_agent_says(
                        older.config, [hello.encode()], judged, "the older agent's hello"
                    ),
                    30,
                )
            )
            assert answers["row"]["all_monitors"] is False
            refused = answers["all"]
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"] == "monitor_unavailable"
            assert refused.json()["message"] == TOO_OLD_FOR_ALL
            # one monitor it reported is still asked for, as before
            assert answers["one"].status_code == 201, answers["one"].text
            sessions = {s["reason"]: s for s in desk.client.get("/api/v1/sessions").json()}
            assert sessions["all at once"]["end_reason"] == "unsupported"
            assert sessions["all at once"]["state"] == "ended"
            wait_for(
                lambda: desk.session(sessions["the left one"]["id"])["state"] == "ended",
                15,
                "the older agent's session to end with its tunnel",
            )
        finally:
            desk.close()
