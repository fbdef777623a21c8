"""A session whose end is owed gets that end and nothing else (review finding).

``fail`` on a session whose end could not be written yet (the audit log was held)
used to write ``session.failed`` and then the owed end: two end records for one
session. The book here is the broker's own (``SessionBook``) on a real audit log
and a real store (SQLite files); the log is held by another process, as in
production when the disk or a backup holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.errors import AuditUnavailable
from allowhelp.broker.model.session import Session, State
from allowhelp.broker.sessions.book import SessionBook
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from harness import Broker, audit_locked, wait_for


@dataclass
class Desk:
    book: SessionBook
    audit: Path
    folder: Path


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    audit = AuditLog.open(tmp_path / "audit.sqlite3", busy_timeout=0.3)
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    book = SessionBook(db, audit, AgentRegistry(), EventHub())
    try:
        yield Desk(book, tmp_path / "audit.sqlite3", tmp_path)
    finally:
        for task in list(book._tasks):
            task.cancel()
        await db.close()
        audit.close()


async def active(book: SessionBook) -> Session:
    """A session the PC user allowed, as ``SessionRegistry.request`` and the PC's
    decision make one (each move on the record)."""
    session = Session.new(
        agent_id="a-" + "d" * 20,
        hostname="pc",
        technician="alice",
        technician_name="Alice",
        kind="shell",
        reason="printer",
    )
    await book._rows.save_now(session)
    book._live[session.id] = session
    await book._move(session.id, State.AWAITING_CONSENT, actor="system")
    await book._move(session.id, State.ACTIVE, actor="user@pc")
    return session


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
