"""The tunnel's store writes go to the writer thread together (``tunnel/batch.py``):
fewer hand-overs, yet each write still lands in order and answers for itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.batch import MAX_BATCH, StoreBatch
from allowhelp.broker.tunnel.listener import StoredHistory


class CountingWorker(StoreWorker):
    """The real store worker; it only counts the calls handed to its writer."""

    handed = 0

    async def run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        self.handed += 1
        return await super().run(method, *args, **kwargs)


async def test_a_storm_of_history_rows_lands_in_order_in_a_few_writer_calls(
    tmp_path: Path,
) -> None:
    db = await CountingWorker.open(tmp_path / "broker.sqlite3")
    assert isinstance(db, CountingWorker)
    try:
        history = StoredHistory(db)
        rows = 150  # within the history's per-agent limit, so all are kept
        await asyncio.gather(
            *(
                history.record_connectivity(
                    "pc-1", "connected" if i % 2 == 0 else "disconnected", f"10.0.0.{i}:22", "", i
                )
                for i in range(rows)
            )
        )
        kept = await db.read(Store.connectivity, "pc-1", rows)
        assert [e.remote for e in reversed(kept)] == [f"10.0.0.{i}:22" for i in range(rows)]
        assert [e.event for e in kept[:2]] == ["disconnected", "connected"]
        assert db.handed <= 2, db.handed  # not one writer call per row
        # A lone write afterwards is not held back waiting for company.
        await asyncio.wait_for(history.record_connectivity("pc-1", "connected", "x:1", "", 999), 5)
        assert (await db.read(Store.connectivity, "pc-1", 1))[0].remote == "x:1"
    finally:
        await db.close()


async def test_each_write_answers_for_itself(tmp_path: Path) -> None:
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    batch = StoreBatch(db)
    written: list[int] = []

    def write(store: Store, n: int) -> None:
        if n == 3:
            raise StoreError("the disk is full")
        if n == 5:
            raise ValueError("a bug in one write")
        written.append(n)

    try:
        said = await asyncio.gather(
            *(batch.run(write, n) for n in range(MAX_BATCH + 10)), return_exceptions=True
        )
        kinds = [type(s).__name__ for s in said[:7]]
        assert kinds == ["NoneType"] * 3 + ["StoreError", "NoneType", "ValueError", "NoneType"]
        assert str(said[3]) == "the disk is full" and str(said[5]) == "a bug in one write"
        assert written == [n for n in range(MAX_BATCH + 10) if n not in (3, 5)]  # in order
    finally:
        await db.close()
    with pytest.raises(StoreError, match="closed"):  # a closed store fails the write, not hangs
        await asyncio.wait_for(batch.run(write, 1), 5)
