"""The audit log's one writer: group commit, and what follows a commit or a refusal.

Group commit: the fsync is most of what a record costs, and a busy broker (a
reconnect storm) asks for many records at once. :meth:`AuditLog.write` queues
its record and one writer thread commits everything queued in one transaction:
one fsync for the lot, one wake-up per event loop to hand the results back.
Fail closed still holds per record, because each caller awaits its own record:
``write`` returns only once the transaction holding it is committed; if that
commit fails, the whole transaction is rolled back (nothing half-written) and
every caller in it gets :class:`AuditUnavailable`. A caller cancelled while
waiting still gets its record committed: a record without its action is
harmless, the reverse is not. The sync :meth:`AuditLog.append` (CLI, tests)
commits inline under the same lock, so seqs and syslog forwarding keep one order.

Anchors: when an :class:`~allowhelp.broker.audit.anchor_sink.AnchorSink` is given,
the head goes to the anchor file and syslog every N records and at close
(``audit/anchor.py`` says what that protects against). The sink runs inside the
commit, under the lock, so an anchor file it finds deleted, replaced or truncated
is chained here, after the batch (``audit.anchors.missing``, actor
:attr:`ChainWriter.change_actor`: ``system``, or the opener's, e.g. ``system:cli``):
with the lock taken again, never from inside the sink, so nothing recurses or
waits on itself. Such a record that cannot be written is logged at error.

:class:`ChainWriter` is the part every back end shares: the SQLite file
(``log.AuditLog``) and PostgreSQL (``pg_chain.PgAuditLog``) add the storage
(``_commit``, ``_rollback``, ``_close_connection``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from allowhelp.broker.audit.entry import (
    Entry,
    Outcome,
    Waiter,
    copy_refusal,
    make_entry,
    settle,
    unavailable,
)
from allowhelp.broker.audit.format import AuditPlace, AuditRecord
from allowhelp.broker.audit.status import ChainState
from allowhelp.broker.errors import AuditUnavailable

if TYPE_CHECKING:
    from allowhelp.broker.audit.anchor_sink import AnchorChange, AnchorSink
    from allowhelp.broker.audit.syslog import SyslogForwarder

log = logging.getLogger(__name__)

# At most this many records per transaction, so one commit stays short and a
# caller queued behind a huge burst does not wait for all of it.
BATCH_MAX = 512
ANCHORS_MISSING = "audit.anchors.missing"  # audit/opening.py's, for a change found later
# At most this many rounds of changes chained after one batch (each record's own head
# may find the file changed again): the rest waits for the next batch.
CHANGE_ROUNDS = 8


class AuditObserver(Protocol):
    """Told of every commit and every refusal (metrics: ``node/metrics.py``).

    Called on the thread that committed, in seq order, after the records are
    on disk; it must be quick and must not raise."""

    def committed(self, records: Sequence[AuditRecord]) -> None: ...

    def refused(self, count: int) -> None: ...


class ChainWriter:
    """Group commit over a back end's ``_commit``; safe to share between threads and tasks."""

    def _setup(
        self,
        place: AuditPlace,
        forwarder: SyslogForwarder | None,
        busy_timeout: float,
        anchors: AnchorSink | None,
    ) -> None:
        """What every back end has (``pg_chain.py`` holds no SQLite connection)."""
        self._path = place
        self._forwarder = forwarder
        self._busy_timeout = busy_timeout
        self._anchors = anchors
        # Who chains a change of the anchor file found after a batch: the opener's actor
        # (``audit/opening.py`` sets it: ``system:cli`` for the command line).
        self.change_actor = "system"
        # What the start-up and background checks found (audit/integrity.py).
        self.integrity = ChainState()
        # Held while the connection is used and while records are forwarded:
        # commits by the writer thread and by append() take turns, in seq order.
        self._lock = threading.Lock()
        # Guards the queue of async writes, the closed flag and the writer.
        self._queue = threading.Condition(threading.Lock())
        self._pending: list[Waiter] = []
        self._closed = False
        self._writer: threading.Thread | None = None
        self._observers: list[AuditObserver] = []
        # (when, why) of the last refused commit; None once one succeeds (healthz).
        self.last_refusal: tuple[float, str] | None = None

    @property
    def path(self) -> AuditPlace:
        """The SQLite file, or the PostgreSQL database (``pg_chain.PgAuditLog``)."""
        return self._path

    @property
    def local_folder(self) -> Path | None:
        """The folder whose free space the log needs (None: on a database server)."""
        return self._path.parent if isinstance(self._path, Path) else None

    @property
    def anchors(self) -> AnchorSink | None:
        return self._anchors

    def observe(self, observer: AuditObserver) -> None:
        self._observers.append(observer)

    def append(
        self,
        type: str,
        *,
        actor: str,
        target: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """Commit one record; only after this returns may the action take effect.

        Blocks for the fsync, inline: for the CLI and tests. The broker's event
        loop uses :meth:`write`.
        """
        entry = make_entry(type, actor, target, details)
        with self._lock:
            if self._closed:
                raise unavailable("the audit log is closed")
            try:
                records = self._commit([entry])
            except AuditUnavailable as exc:
                self._tell_refused(1, str(exc))
                raise
            self._forward(records)
        self._chain_anchor_changes()
        return records[0]

    async def write(
        self,
        type: str,
        *,
        actor: str,
        target: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """:meth:`append` without blocking the event loop: group-committed.

        A bad record (unknown type, details that are not JSON) raises here, at
        once. Otherwise returns once the transaction holding this record is
        committed, or raises :class:`AuditUnavailable` if it was not.
        """
        entry = make_entry(type, actor, target, details)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditRecord] = loop.create_future()
        with self._queue:
            if self._closed:
                raise unavailable("the audit log is closed")
            if self._writer is None:
                # Started on first use, so the CLI (append only) never has one.
                # A daemon: a forgotten close() must not hang the exit, and no
                # caller goes ahead before its record is committed anyway.
                self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._writer.start()
            self._pending.append(Waiter(entry, loop, future))
            if len(self._pending) == 1:  # else the writer was told already
                self._queue.notify()
        return await future

    def _run(self) -> None:
        """The writer thread: each turn commits everything queued (up to
        :data:`BATCH_MAX`) in one transaction. Exits once closed and drained."""
        try:
            while True:
                with self._queue:
                    while not self._pending and not self._closed:
                        self._queue.wait()
                    if not self._pending:
                        return
                    batch = self._pending[:BATCH_MAX]
                    del self._pending[:BATCH_MAX]
                self._write_batch(batch)
        finally:  # only a bug gets here with work left: refuse it all, hang nobody
            with self._queue:
                self._closed, stranded, self._pending = True, self._pending, []
            if stranded:
                self._hand_back(
                    stranded, [unavailable("the audit writer stopped") for _ in stranded]
                )

    def _write_batch(self, batch: list[Waiter]) -> None:
        with self._lock:
            try:
                records = self._commit([waiter.entry for waiter in batch])
            except Exception as exc:  # a bug too must fail the callers, never strand them
                refusal = exc if isinstance(exc, AuditUnavailable) else self._internal(exc)
                # One exception per caller: a shared one would gather every task's traceback.
                self._hand_back(batch, [copy_refusal(refusal) for _ in batch])
                self._tell_refused(len(batch), str(refusal))
                return
            self._hand_back(batch, records)
            self._forward(records)
        self._chain_anchor_changes()

    def _internal(self, exc: Exception) -> AuditUnavailable:
        self._rollback()
        log.error("audit writer failed on a batch", exc_info=exc)
        refusal = unavailable(f"internal error ({type(exc).__name__})")
        refusal.__cause__ = exc
        return refusal

    @staticmethod
    def _hand_back(batch: list[Waiter], outcomes: Sequence[Outcome]) -> None:
        """One thread-safe call per event loop for the whole batch, not one
        wake-up per record: those wake-ups were much of a busy broker's CPU."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditRecord], Outcome]]]
        by_loop = {}
        for waiter, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, outcome))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle, settled)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                log.debug("audit results for a closed event loop dropped")

    def _forward(self, records: Sequence[AuditRecord]) -> None:
        """Hand committed records to syslog; called under the lock, so in seq order."""
        for record in records:
            log.debug("audit record %d %s committed", record.seq, record.type)
            if self._forwarder is None:
                continue
            try:
                self._forwarder.submit(record)  # never blocks
            except Exception:  # committed already; forwarding is best effort
                log.warning("syslog forwarding of record %d failed", record.seq, exc_info=True)
        if self._anchors is not None and records:
            self._anchors.after_commit(records[-1].seq, records[-1].hash)  # never raises
        self.last_refusal = None
        for observer in self._observers:
            observer.committed(records)

    def _chain_anchor_changes(self) -> None:
        """Chain what the anchor sink found while writing heads (not under the lock)."""
        sink = self._anchors
        if sink is None:
            return
        for _ in range(CHANGE_ROUNDS):
            changes = sink.take_changes()
            if not changes:
                return
            with self._lock:
                self._chain_changes(changes)

    def _chain_changes(self, changes: Sequence[AnchorChange]) -> None:
        """One ``audit.anchors.missing`` per change, under the lock; forwarded and
        anchored like any record. Never raises: a failure is logged, each one named."""
        try:
            entries = [
                make_entry(ANCHORS_MISSING, self.change_actor, change.path, change.details())
                for change in changes
            ]
            records = self._commit(entries)
        except Exception as exc:
            if not isinstance(exc, AuditUnavailable):
                self._rollback()
            for change in changes:
                unchained(change, str(exc) or type(exc).__name__)
            self._tell_refused(len(changes), str(exc))
            return
        self._forward(records)

    def _tell_refused(self, count: int, reason: str) -> None:
        self.last_refusal = (time.monotonic(), reason)
        for observer in self._observers:
            observer.refused(count)

    def close(self) -> None:
        """Refuse new writes, let the queued ones land (or fail), then close.

        Writes queued before this call are committed by the writer before it
        exits; any later one is refused at once, so none can hang. The
        forwarder stays the caller's.
        """
        with self._queue:
            self._closed = True
            writer = self._writer
            self._queue.notify_all()
        if writer is not None:
            writer.join()
        self._close_connection()
        for change in self._anchors.take_changes() if self._anchors is not None else ():
            unchained(change, "the audit log was closing")  # a back end that did not chain it

    # the back end's

    def _commit(self, entries: Sequence[Entry]) -> list[AuditRecord]:
        """All of ``entries`` in one transaction, or none (``AuditUnavailable``)."""
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _close_connection(self) -> None:
        raise NotImplementedError


def unchained(change: AnchorChange, reason: str) -> None:
    """An ``audit.anchors.missing`` record that could not be written: said, not dropped."""
    log.error(
        "AUDIT RECORD %s NOT WRITTEN for the anchor file %s (%s at head %d): %s",
        ANCHORS_MISSING,
        change.path,
        change.why,
        change.seq,
        reason,
    )
