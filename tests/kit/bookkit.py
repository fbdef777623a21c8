"""Sessions in the broker's own ``SessionRegistry`` (a real audit log and store), made
as ``request`` and the PC's answer leave them, for tests of the registry itself."""

from __future__ import annotations

from allowhelp.broker.model.session import Session, State
from allowhelp.broker.sessions.registry import SessionRegistry


async def requested(book: SessionRegistry, agent_id: str, technician: str) -> Session:
    """A shell session a technician asked for, saved and live (not yet decided)."""
    session = Session.new(
        agent_id=agent_id,
        hostname="pc",
        technician=technician,
        technician_name=technician.title(),
        kind="shell",
        reason="printer",
    )
    await book._rows.save_now(session)
    book._live[session.id] = session
    return session


async def active(book: SessionRegistry) -> Session:
    """A session alice asked for and the PC user allowed, each move on the record."""
    session = await requested(book, "a-" + "d" * 20, "alice")
    await book._move(session.id, State.AWAITING_CONSENT, actor="system")
    await book._move(session.id, State.ACTIVE, actor="user@pc")
    return session
