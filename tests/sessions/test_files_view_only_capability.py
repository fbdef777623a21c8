"""View-only files go only to an agent that said it runs them read-only.

An agent older than view-only files would start the PC user's sftp-server
read-write, whatever the request said. The broker refuses such a request first:
409 ``files_view_only_unsupported``, the session ended at once as ``unsupported``,
and no consent request goes to the PC (it is never asked, so its user cannot allow
a read-write session they were told was view only). An ordinary files request to
the same agent is asked as before.

The older agent is an enrolled agent's own key saying an older hello (no
``files_view_only``) on the real control channel, through the real broker
(as in ``test_all_monitors_capability.py``); the current agent is the real one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from roguekit import rogue_agent_says

from allowhelp.protocol.control import Hello
from harness import TECH, TECH_PW, Broker, Desk, running_fleet


def _row(desk: Desk, agent_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = desk.client.get("/api/v1/agents").json()
    return next(r for r in rows if r["id"] == agent_id)


def _records(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    return broker.audit_records(session_id)


def test_view_only_files_are_refused_to_an_older_agent_before_the_pc_is_asked(
    tmp_path: Path,
) -> None:
    with running_fleet(tmp_path) as (fleet, broker, _current):
        older = fleet.agent("older")
        assert older.enroll(broker.token()).returncode == 0
        desk = Desk.login(broker, TECH, TECH_PW)
        try:
            hello = Hello(hostname="old-pc", os="Debian 12", user="ann", version="0.1.0")
            assert hello.files_view_only is False  # what an older agent's hello says
            answers: dict[str, Any] = {}

            def judged() -> bool:
                if not _row(desk, older.agent_id)["online"]:
                    return False
                answers["view"] = desk.request(
                    older.agent_id, kind="files", reason="only look", view_only=True
                )
                answers["files"] = desk.request(older.agent_id, kind="files", reason="exchange")
                return True

            asyncio.run(
                asyncio.wait_for(
                    rogue_agent_says(
                        older.config, [hello.encode()], judged, "the older agent's hello"
                    ),
                    30,
                )
            )
            refused = answers["view"]
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"] == "files_view_only_unsupported"
            assert "older than view-only files" in refused.json()["message"]
            assert answers["files"].status_code == 201, answers["files"].text  # as before
            sessions = {s["reason"]: s for s in desk.client.get("/api/v1/sessions").json()}
            ended = sessions["only look"]
            assert ended["state"] == "ended" and ended["end_reason"] == "unsupported"
            records = _records(broker, ended["id"])
            assert records, "the refused request is on the record"
            # never asked: no consent request was sent to the PC
            assert not [r for r in records if "asked" in r["details"]], records
            asked = _records(broker, sessions["exchange"]["id"])
            assert [r for r in asked if "asked" in r["details"]], asked
        finally:
            desk.close()
