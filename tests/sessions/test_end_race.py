"""Nothing attaches to a session whose end is being written.

An end stops the session's relays first, then writes its record; until the record
is written the session is still live and active in memory. A technician's page that
attached in that moment used to be let in: its relay started after access had
stopped, outlived the end record, and was never stopped. A real broker and agent;
the audit log is held so the end's record waits while the page knocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from harness import TECH, TECH_PW, Agent, Broker, Desk, audit_locked, running_fleet
from terminalkit import consented_shell, refused

# No outside fact says the end's record is queued behind the held log: a short grace,
# well inside the writer's 2 s busy timeout.
GRACE = 0.5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("end-race")) as (_, broker, agent):
        yield broker, agent


async def test_a_page_knocking_while_the_end_is_written_is_refused(
    setup: tuple[Broker, Agent],
) -> None:
    broker, agent = setup
    owner = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
    try:
        session_id = await asyncio.to_thread(consented_shell, owner, agent)
        with audit_locked(broker):
            ending = asyncio.create_task(
                asyncio.to_thread(owner.client.post, f"/api/v1/sessions/{session_id}/end")
            )
            await asyncio.sleep(GRACE)  # access stopped; the record waits for the log
            assert await refused(owner, session_id) == 403
        await asyncio.wait_for(ending, 20)
        ended = await asyncio.to_thread(owner.wait_state, session_id, "ended")
        assert ended["end_reason"] == "technician"
    finally:
        owner.close()
