"""The job expiry sweep through a database outage: said once, and once when it is over.

The sweep runs every few seconds; while the store is unreachable every run fails
the same way, and an error line per run would bury the broker's log (the outage
itself is on ``/healthz`` and on every refused request). The store here is a
stand-in: only the sweep's own bookkeeping is under test.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from allowhelp.broker.errors import StoreError
from allowhelp.broker.jobs.desk import JobDesk
from allowhelp.broker.store.worker import StoreWorker

SWEEP = 0.01


class FlakyStore:
    """Answers ``read`` with a StoreError while ``down``, else with nothing due."""

    def __init__(self) -> None:
        self.down = True
        self.reads = 0

    async def read(self, *_: object) -> list[tuple[str, str]]:
        self.reads += 1
        if self.down:
            raise StoreError("database error: disk I/O error")
        return []


class NoAgents:
    def subscribe(self, _: object) -> Any:
        return lambda: None


async def wait_reads(store: FlakyStore, count: int) -> None:
    async with asyncio.timeout(10):
        while store.reads < count:
            await asyncio.sleep(SWEEP)


async def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    desk = JobDesk(
        cast(StoreWorker, store),
        cast(Any, None),
        cast(Any, NoAgents()),
        cast(Any, None),
        lambda *_: None,
        sweep_every=SWEEP,
    )
    caplog.set_level(logging.INFO, logger="allowhelp.broker.jobs.expiry")
    desk.start()
    try:
        await wait_reads(store, 20)
        store.down = False
        await wait_reads(store, store.reads + 5)
    finally:
        await desk.stop()
    said = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
    assert said == [
        "the job expiry sweep cannot run until this clears: database error: disk I/O error",
        "the job expiry sweep runs again",
    ]
