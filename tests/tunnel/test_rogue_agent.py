"""A rogue agent (enrolled, with its own valid key) cannot act for another PC."""

from __future__ import annotations

import asyncio
from pathlib import Path

from roguekit import rogue_agent_says

from allowhelp.protocol.control import (
    ConsentDecision,
    ConsentRequest,
    HelpCode,
    HelpRefused,
    SessionEnd,
)
from harness import (
    TECH,
    TECH_PW,
    Desk,
    log_mark,
    log_since,
    running_fleet,
    wait_pending,
)


def test_a_rogue_agent_cannot_answer_or_end_another_pcs_session(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as (fleet, broker, victim):
        rogue = fleet.agent("rogue")
        assert rogue.enroll(broker.token()).returncode == 0
        desk = Desk.login(broker, TECH, TECH_PW)
        try:
            session = desk.request(victim.agent_id).json()
            wait_pending(victim, session["id"])
            sid = session["id"]
            lines = [
                ConsentDecision(
                    session_id=sid,
                    granted=True,
                    view_only=False,
                    via="cli",
                    elapsed=1.0,
                    prompt="forged",
                ).encode(),
                SessionEnd(session_id=sid, reason="user").encode(),
                ConsentRequest(
                    session_id=sid,
                    organisation="x",
                    technician="x",
                    kind="shell",
                    reason="x",
                    phrase="x",
                    timeout=5,
                ).encode(),
                HelpCode(ref="r", code="000 000", expires_in=1).encode(),
                HelpRefused(ref="r", reason="forged").encode(),
            ]
            me = f"agent={rogue.agent_id}"
            # What the broker says of each line, in the order it judges them (one
            # worker per agent, in order): once the last is logged, all were judged.
            judged = [
                f"{me} answered a session that is not its own",
                f"{me} ended a session that is not its own",
                f"{me} sent a consent.request, which agents may not send",
                f"{me} sent a help.code, which agents may not send",
                f"{me} sent a help.refused, which agents may not send",
            ]
            mark = log_mark(broker.log)

            attack = rogue_agent_says(
                rogue.config,
                lines,
                lambda: judged[-1] in log_since(broker.log, mark),
                "the broker to judge every line the rogue sent",
            )
            asyncio.run(asyncio.wait_for(attack, 30))
            said = log_since(broker.log, mark)
            for line in judged:
                assert line in said, line
            # Nothing the rogue said touched the victim's session.
            assert desk.session(sid)["state"] == "awaiting_consent"
            assert broker.proc is not None and broker.proc.poll() is None
        finally:
            desk.close()
