"""Group commit in the audit log: many writers, one transaction, fail closed per record.

Batching is made deterministic by holding the log's connection lock: the writer
thread then stalls on a first batch, the test queues more writes, and releasing
the lock lets the writer commit all of those in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from allowhelp.broker.audit import writer as writer_module
from allowhelp.broker.audit.log import AuditLog, AuditRecord, verify
from allowhelp.broker.errors import AuditUnavailable

TIMEOUT = 30.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


class Spy:
    """Counts the transactions the writer commits and how many records each holds."""

    def __init__(self, log: AuditLog) -> None:
        self.batches: list[int] = []
        self.commits = 0
        real = log._commit

        def commit(entries: Sequence[Any]) -> list[AuditRecord]:
            self.batches.append(len(entries))
            return real(entries)

        def trace(statement: str) -> None:
            if statement == "COMMIT":
                self.commits += 1

        log._commit = commit  # type: ignore[method-assign]
        log._conn.set_trace_callback(trace)


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


@contextmanager
def writer_stalled(log: AuditLog) -> Iterator[None]:
    """Keep the writer from committing: it waits for the connection lock.
    (So no sync ``append`` or ``head`` in this thread meanwhile.)"""
    log._lock.acquire()
    try:
        yield
    finally:
        log._lock.release()


async def queue_behind_blocker(
    log: AuditLog, writes: Callable[[], Sequence[Awaitable[AuditRecord]]]
) -> tuple[asyncio.Task[AuditRecord], list[asyncio.Task[AuditRecord]]]:
    """With the writer stalled: let it take a first record, then queue ``writes``
    behind it, so they are all pending together and make exactly the next batch."""
    blocker = asyncio.ensure_future(log.write("broker.started", actor="system"))
    await until(lambda: log._writer is not None and not log._pending, "the writer took a batch")
    tasks = [asyncio.ensure_future(w) for w in writes()]
    await until(lambda: len(log._pending) == len(tasks), "all writes are queued")
    return blocker, tasks


async def test_many_concurrent_writers_get_their_own_records_in_one_chain(path: Path) -> None:
    log = AuditLog.open(path)
    spy = Spy(log)
    n = 1000
    async with asyncio.timeout(TIMEOUT):
        records = await asyncio.gather(
            *(
                log.write("agent.connected", actor=f"agent:a{i}", target=f"pc{i}", details={"i": i})
                for i in range(n)
            )
        )
    # Every caller got its own record back, the one now on disk under that seq.
    on_disk = {r.seq: r for r in log.records()}
    for i, record in enumerate(records):
        assert (record.actor, record.target, record.details) == (f"agent:a{i}", f"pc{i}", {"i": i})
        assert on_disk[record.seq] == record
    assert sorted(r.seq for r in records) == list(range(1, n + 1))
    assert sum(spy.batches) == n
    assert spy.commits == len(spy.batches) < n  # batching happened: fewer fsyncs than records
    log.close()
    result = verify(path)
    assert result.ok and result.count == n, result.problem


async def test_queued_writes_are_committed_in_one_transaction(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog.open(path)
    spy = Spy(log)
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    real_call_soon_threadsafe = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Callable[..., object], *args: Any, **kw: Any) -> Any:
        wakeups.append(callback)
        return real_call_soon_threadsafe(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", call_soon_threadsafe)
    with writer_stalled(log):
        blocker, tasks = await queue_behind_blocker(
            log, lambda: [log.write("token.used", actor=f"agent:a{i}") for i in range(200)]
        )
    async with asyncio.timeout(TIMEOUT):
        first = await blocker
        records = await asyncio.gather(*tasks)
    assert spy.batches == [1, 200]
    assert spy.commits == 2  # 201 records, 2 fsyncs
    assert len(wakeups) == 2  # and one wake-up of this loop per batch, not per record
    assert [r.seq for r in records] == list(range(2, 202))  # queue order is seq order
    assert records[0].prev_hash == first.hash
    assert len({r.ts for r in records}) == 1  # committed at one instant
    log.close()
    assert verify(path).count == 201


async def test_a_batch_is_capped(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "BATCH_MAX", 16)
    log = AuditLog.open(path)
    spy = Spy(log)
    with writer_stalled(log):
        blocker, tasks = await queue_behind_blocker(
            log, lambda: [log.write("token.used", actor=f"agent:a{i}") for i in range(40)]
        )
    async with asyncio.timeout(TIMEOUT):
        await blocker
        await asyncio.gather(*tasks)
    assert spy.batches == [1, 16, 16, 8]
    log.close()
    assert verify(path).count == 41


async def test_a_failing_batch_fails_every_caller_in_it_and_nothing_is_half_written(
    path: Path,
) -> None:
    log = AuditLog.open(path)
    kept = [log.append("token.created", actor="admin:root", details={"i": i}) for i in range(3)]
    with log._lock:
        pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
        log._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the database is full
    # Each record alone would fit; the batch of them does not.
    with writer_stalled(log):
        blocker, tasks = await queue_behind_blocker(
            log,
            lambda: [
                log.write("session.requested", actor=f"technician:t{i}", details={"x": "x" * 1000})
                for i in range(40)
            ],
        )
    async with asyncio.timeout(TIMEOUT):
        first = await blocker  # the batch before is not affected
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert first.seq == len(kept) + 1
    assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
    errors = [o for o in outcomes if isinstance(o, AuditUnavailable)]
    assert {str(e) for e in errors} == {
        "audit log unavailable: the disk or the audit database is full; the action was refused"
    }
    assert all(isinstance(e.__cause__, sqlite3.Error) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)  # one exception per caller
    assert not log._conn.in_transaction
    assert log.head() == (first.seq, first.hash)  # nothing of the failed batch is on disk
    assert verify(path).ok
    with log._lock:
        log._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    async with asyncio.timeout(TIMEOUT):
        after = await log.write("session.requested", actor="technician:t0", details={"x": "x"})
    assert (after.seq, after.prev_hash) == (first.seq + 1, first.hash)  # the next batch is clean
    log.close()
    result = verify(path)
    assert result.ok and result.count == after.seq


async def test_a_read_only_log_refuses_a_whole_batch_then_the_next(path: Path) -> None:
    AuditLog.open(path).close()
    log = AuditLog.open(path, _read_only=True)
    for _ in range(2):
        async with asyncio.timeout(TIMEOUT):
            outcomes = await asyncio.gather(
                *(log.write("consent.granted", actor=f"user:u{i}") for i in range(20)),
                return_exceptions=True,
            )
        assert all(isinstance(o, AuditUnavailable) and "read-only" in str(o) for o in outcomes)
        assert not log._conn.in_transaction
    log.close()
    assert verify(path).count == 0


async def test_bad_records_are_refused_at_once_and_never_queued(path: Path) -> None:
    log = AuditLog.open(path)
    with pytest.raises(ValueError, match=r"unknown audit event type 'consent\.maybe'"):
        await log.write("consent.maybe", actor="system")
    with pytest.raises(TypeError, match="JSON"):
        await log.write("broker.started", actor="system", details={"when": object()})
    assert log._writer is None and not log._pending  # nothing reached the writer
    # A bad record among good ones fails only its own caller.
    async with asyncio.timeout(TIMEOUT):
        outcomes = await asyncio.gather(
            log.write("token.used", actor="a"),
            log.write("broker.started", actor="system", details={"bad": {1, 2}}),
            log.write("token.used", actor="b"),
            return_exceptions=True,
        )
    assert isinstance(outcomes[1], TypeError)
    assert [o.seq for o in outcomes if isinstance(o, AuditRecord)] == [1, 2]
    log.close()
    assert verify(path).count == 2


async def test_close_lets_queued_writes_land_and_refuses_later_ones(path: Path) -> None:
    log = AuditLog.open(path)
    closer = threading.Thread(target=log.close)
    with writer_stalled(log):
        blocker, tasks = await queue_behind_blocker(
            log, lambda: [log.write("session.ended", actor=f"technician:t{i}") for i in range(50)]
        )
        closer.start()
        await until(lambda: log._closed, "close() has started")
        with pytest.raises(AuditUnavailable, match="the audit log is closed"):
            await log.write("session.ended", actor="late")  # refused at once, no hang
        assert closer.is_alive()  # close() waits for the writes in flight...
        assert not blocker.done() and not any(t.done() for t in tasks)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.to_thread(closer.join, TIMEOUT)
        records = [await blocker, *await asyncio.gather(*tasks)]  # ...which all landed
    assert not closer.is_alive()
    assert [r.seq for r in records] == list(range(1, 52))
    assert log._writer is not None and not log._writer.is_alive()
    result = verify(path)
    assert result.ok and result.count == 51
    with pytest.raises(AuditUnavailable, match="the audit log is closed"):
        await log.write("session.ended", actor="later")
    with pytest.raises(AuditUnavailable, match="the audit log is closed"):
        log.append("session.ended", actor="later")
    log.close()  # twice is harmless


async def test_a_cancelled_caller_does_not_disturb_the_others(path: Path) -> None:
    log = AuditLog.open(path)
    with writer_stalled(log):
        blocker, tasks = await queue_behind_blocker(
            log, lambda: [log.write("consent.asked", actor=f"user:u{i}") for i in range(3)]
        )
        tasks[1].cancel()  # e.g. the technician's request was dropped while waiting
        await asyncio.sleep(0)
    async with asyncio.timeout(TIMEOUT):
        await blocker
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [o.seq for o in (outcomes[0], outcomes[2]) if isinstance(o, AuditRecord)] == [2, 4]
    log.close()
    assert verify(path).count == 4  # its record still landed: a record without action is harmless


def test_sync_appends_and_async_writes_share_one_order(path: Path) -> None:
    seen: list[int] = []

    class Forwarder:
        def submit(self, record: AuditRecord) -> None:
            seen.append(record.seq)

    log = AuditLog.open(path, forwarder=Forwarder())  # type: ignore[arg-type]

    def appender(k: int) -> None:
        for i in range(50):
            log.append("agent.disconnected", actor=f"thread:{k}", details={"i": i})

    async def writers() -> None:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(
                *(log.write("agent.connected", actor=f"task:{i}") for i in range(200))
            )

    def loop_thread() -> None:
        asyncio.run(writers())

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=loop_thread) for _ in range(2)]  # two event loops
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    log.close()
    total = 2 * 50 + 2 * 200
    assert seen == list(range(1, total + 1))  # forwarded once each, in seq order
    result = verify(path)
    assert result.ok and result.count == total, result.problem
