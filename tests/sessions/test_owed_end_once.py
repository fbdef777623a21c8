"""A session whose end is owed gets that end and nothing else (review findings).

``fail`` on a session whose end could not be written yet (the audit log was held)
used to write ``session.failed`` and then the owed end: two end records for one
session. And a session whose owed end is let go (another node recorded its end
while this one was cut off) kept its invitations in memory until a restart.
The book and the invitations here are the broker's own (``SessionRegistry``,
``InviteDesk``) on a real audit log and a real store (SQLite files); the log is
held by another process, as in production when the disk or a backup holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from bookkit import active, requested

from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.errors import AuditUnavailable
from allowhelp.broker.model.session import State
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.help import HelpDesk
from allowhelp.broker.sessions.invitation import Invitation, InviteState
from allowhelp.broker.sessions.invites import InviteDesk
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from harness import Broker, audit_locked, wait_for


@dataclass
class Desk:
    book: SessionRegistry
    invites: InviteDesk
    audit: Path
    folder: Path


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    audit = AuditLog.open(tmp_path / "audit.sqlite3", busy_timeout=0.3)
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    agents, events = AgentRegistry(), EventHub()
    help_desk = HelpDesk(db, audit, events, agents)
    book = SessionRegistry(
        db, audit, agents, events, help_desk, organisation="IT", consent_timeout=60
    )
    invites = InviteDesk(book, audit, db, events, organisation="IT", consent_timeout=60)
    try:
        yield Desk(book, invites, tmp_path / "audit.sqlite3", tmp_path)
    finally:
        for task in [*book._tasks, *invites._tasks]:
            task.cancel()
        await db.close()
        audit.close()


def types_for(audit: Path, session_id: str) -> list[str]:
    return [r.type for r in read_records(audit) if r.target == session_id]


async def test_failing_a_session_whose_end_is_owed_writes_no_second_end(desk: Desk) -> None:
    session = await active(desk.book)
    # its end cannot be written while the log is held: owed
    with audit_locked(Broker(desk.folder)), pytest.raises(AuditUnavailable):
        await desk.book.end(session.id, reason="user", actor="user@pc")
    assert desk.book.ending(session.id)
    await desk.book.fail(session.id, "the screen failed")  # the log takes records again
    await asyncio.to_thread(
        wait_for, lambda: desk.book.live(session.id) is None, 20, "the owed end written"
    )
    types = types_for(desk.audit, session.id)
    assert types.count("session.ended") == 1
    assert "session.failed" not in types
    ended = [r for r in read_records(desk.audit) if r.type == "session.ended"]
    assert ended[0].details["end_reason"] == "user" and ended[0].details["recorded_late"]


async def test_invitations_of_a_session_another_node_ended_are_let_go(desk: Desk) -> None:
    session = await active(desk.book)
    invitation = Invitation(
        id="inv" + session.id[3:],
        session_id=session.id,
        agent_id=session.agent_id,
        username="bob",
        full_name="Bob",
        mode="observe",
        phrase="one two three",
        invited_by="alice",
        state=InviteState.ALLOWED,
    )
    desk.invites._all[invitation.id] = invitation  # as ``invite`` and the PC's yes leave it

    async def ended_elsewhere(session_id: str) -> bool:
        return False  # node/cluster.py's answer when another node wrote the end

    desk.book.guard_late_ends(ended_elsewhere)
    with audit_locked(Broker(desk.folder)), pytest.raises(AuditUnavailable):
        await desk.book.end(session.id, reason="broker_restart", actor="system")  # cut off
    assert invitation.state is InviteState.ENDED  # access stopped before the record
    await asyncio.to_thread(
        wait_for, lambda: desk.book.live(session.id) is None, 20, "the owed end let go"
    )
    assert "session.ended" not in types_for(desk.audit, session.id)  # the other node's
    assert desk.invites.of_session(session.id) == []  # not kept until a restart
    # the invitee's page gets what it gets for any ended session: their invitation, ended
    assert desk.invites.seen_by(session.id, "bob") is invitation


async def test_a_lost_tunnel_ends_the_sessions_asked_on_it_not_one_still_being_asked(
    desk: Desk,
) -> None:
    """A tunnel replaced while the agent stays online (a reconnect) ends the sessions
    tied to it; a request still waiting for the PC to wake is tied to no tunnel yet
    and goes on over the newer one (it used to end as ``agent_lost`` too)."""
    book = desk.book
    tied = await active(book)
    book.pin_link(tied.id, cast(AgentLink, object()))  # a tunnel that is not current
    asking = await requested(book, tied.agent_id, "bob")  # waiting in ``_ask`` for the wake
    book._link_lost(tied.agent_id)
    await asyncio.wait_for(asyncio.gather(*book._tasks), 10)
    assert "session.ended" in types_for(desk.audit, tied.id)
    assert tied.id not in book._live or book._live[tied.id].final
    assert book._live[asking.id].state is State.REQUESTED  # not ended
    assert "session.ended" not in types_for(desk.audit, asking.id)
    # offline is another matter: every session of the agent is lost
    book._agent_changed(tied.agent_id, online=False)
    await asyncio.wait_for(asyncio.gather(*book._tasks), 10)
    assert "session.ended" in types_for(desk.audit, asking.id)
