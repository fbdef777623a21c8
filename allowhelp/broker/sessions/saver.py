"""Sessions to ``broker.sqlite3``, behind the audit log and never in a live session's way.

The chain is the record of what happened to a session; the ``sessions``
table is what the console lists once a session is no longer live in memory,
and what a restarted broker finds open. So a state change, once audited, is
adopted at once (in memory, published, acted on) and its row is written
behind it: a locked or slow database never holds up a consent, an end or a
relay. Until its row is written, the session's latest state is kept here and
lookups see it (``latest``), so the console never shows an older state than
the chain holds. Failed writes are retried, latest state only (a row is
written whole), until the database takes them again; the broker's shutdown
waits a bounded time for what is still owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.session import Session
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class SessionSaver:
    def __init__(self, db: StoreWorker) -> None:
        self._db = db
        self._unsaved: dict[str, Session] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def save(self, session: Session) -> None:
        """Write this state of the session's row, behind the caller."""
        self._unsaved[session.id] = session
        self._idle.clear()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def save_now(self, session: Session) -> None:
        """Write the row before going on; ``StoreError`` when the database refuses it."""
        await self._db.run(Store.save_session, session)

    def forget(self, session_id: str) -> None:
        """Write no more of this session's row (another node has the last word on it)."""
        self._unsaved.pop(session_id, None)

    def latest(self, session_id: str) -> Session | None:
        """The session's state when it is newer than its row."""
        return self._unsaved.get(session_id)

    def pending(self) -> list[Session]:
        return list(self._unsaved.values())

    async def drain(self) -> None:
        """Until every owed row is written (the caller bounds the wait)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop retrying; what is still owed is said in the log."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._unsaved:
            log.error(
                "%d sessions' rows were not written: the database is unavailable",
                len(self._unsaved),
            )

    async def _flush(self) -> None:
        delay = RETRY_FIRST
        while self._unsaved:
            session_id, session = next(iter(self._unsaved.items()))
            try:
                await self._db.run(Store.save_session, session)
            except StoreError as exc:
                log.warning(
                    "session=%s row not written yet (retry in %g s): %s", session_id, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            if self._unsaved.get(session_id) is session:  # else a newer state is owed
                del self._unsaved[session_id]
        self._idle.set()
