"""What each machine service says its PC is, kept per machine (the console's machine details).

The package list arrives in parts (``InventoryReport.part`` of ``parts``); the
parts of one report are gathered here and stored together when the last one
arrives in order. Anything out of order starts over; at most ``MAX_PARTS``
parts and the text made plain, so a PC can neither flood the broker's memory
nor put markup or escapes in the console.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.protocol.control import InventoryReport
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

MAX_PARTS = 32


@dataclass
class _Gathering:
    parts: int
    packages: list[str] = field(default_factory=list)
    next_part: int = 0


class MachineInventory:
    def __init__(self, db: StoreWorker) -> None:
        self._db = db
        self._gathering: dict[str, _Gathering] = {}

    async def report(self, agent_id: str, message: InventoryReport) -> None:
        if not 1 <= message.parts <= MAX_PARTS or not 0 <= message.part < message.parts:
            log.warning("agent=%s sent an inventory part out of bounds", agent_id)
            self._gathering.pop(agent_id, None)
            return
        if message.part == 0:
            self._gathering[agent_id] = _Gathering(message.parts)
        gathering = self._gathering.get(agent_id)
        if gathering is None or gathering.next_part != message.part:
            self._gathering.pop(agent_id, None)
            return
        if gathering.parts != message.parts:
            self._gathering.pop(agent_id, None)
            return
        gathering.packages += [
            line for line in (plain_text(raw, 200) for raw in message.packages.split("\n")) if line
        ]
        gathering.next_part += 1
        if gathering.next_part < gathering.parts:
            return
        del self._gathering[agent_id]
        inventory: dict[str, object] = {
            "os": plain_text(message.os, 200),
            "kernel": plain_text(message.kernel, 200),
            "disk_total": message.disk_total,
            "disk_free": message.disk_free,
            "memory_total": message.memory_total,
            "last_boot": message.last_boot,
            "package_count": message.package_count,
            "packages": gathering.packages,
        }
        try:
            await self._db.run(Store.set_inventory, agent_id, inventory)
        except StoreError as exc:
            log.error("agent=%s inventory not stored: %s", agent_id, exc)
