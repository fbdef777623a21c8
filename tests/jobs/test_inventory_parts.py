"""The inventory's parts: cut on the PC, gathered by the broker, stored only when whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from allowhelp.agent.inventory import MAX_PARTS, PART_TEXT, inventory_parts
from allowhelp.broker.jobs.inventory import MachineInventory
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

FACTS: dict[str, float | str] = {
    "os": "Debian <b>12</b>",
    "kernel": "6.1\x1b[31m",
    "disk_total": 5e11,
    "disk_free": 1e11,
    "memory_total": 1.6e10,
    "last_boot": 1_796_000_000.0,
}


def packages(count: int) -> list[str]:
    return [f"package-{n:05d} 1.{n}-1" for n in range(count)]


def test_parts_are_cut_to_fit_and_bounded() -> None:
    one = inventory_parts(packages(10), **FACTS)
    assert len(one) == 1 and one[0].package_count == 10
    many = inventory_parts(packages(3000), **FACTS)
    assert len(many) > 1 and all(len(part.packages) <= PART_TEXT for part in many)
    assert "\n".join(p.packages for p in many).split("\n") == packages(3000)
    huge = inventory_parts(packages(100_000), **FACTS)
    assert len(huge) == MAX_PARTS and huge[0].package_count == 100_000
    assert inventory_parts([], **FACTS)[0].packages == ""


async def test_the_broker_stores_only_a_whole_report_in_order(tmp_path: Path) -> None:
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    try:
        gather = MachineInventory(db)
        parts = inventory_parts(packages(3000), **FACTS)
        assert len(parts) >= 3
        await gather.report("a-pc", parts[0])
        await gather.report("a-pc", parts[2])  # out of order: dropped, nothing stored
        for part in parts[1:]:
            await gather.report("a-pc", part)
        assert await db.read(Store.inventory, "a-pc") is None
        await gather.report("a-pc", replace(parts[0], parts=MAX_PARTS + 1))  # out of bounds
        for part in parts:
            await gather.report("a-pc", part)
        found = await db.read(Store.inventory, "a-pc")
        assert found is not None
        inventory, _ = found
        assert inventory["packages"] == packages(3000)
        assert inventory["os"] == "Debian <b>12</b>"  # text, shown as text by the console
        assert inventory["kernel"] == "6.1[31m"  # the escape is gone
    finally:
        await db.close()
