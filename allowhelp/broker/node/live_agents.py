"""What the agents whose tunnel this node holds said in their hello, for the other
nodes' agent lists (#21, routing; docs/multinode.md).

A node with ``--node-listen`` writes, for each agent connected to it, who is signed
in on the PC, the screen engine its session offers (and why not, and the desktop),
and its monitors into ``agent_live`` each time the agent says hello, and removes it
when the tunnel goes; the other nodes read it with the agent's node
(``Store.agents_elsewhere_live``) and list the agent as this node does. Writes go in
the order the agents changed, the latest state of each agent only (an agent that
says hello twice while a write is on its way is written once more, not twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from allowhelp.broker.errors import BrokerError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry, LiveAgent

log = logging.getLogger(__name__)


def live_details(live: LiveAgent) -> dict[str, object]:
    """The fields of the agent list (``console/api/fleet.py``) that come from the hello."""
    return {
        "system": live.system,
        "signed_in": live.user or None,
        "screen": live.screen,
        "screen_problem": live.screen_problem,
        "desktop": live.desktop,
        "monitors": [m.to_json() for m in live.monitors],
        "all_monitors": live.all_monitors,
    }


class LiveAgentsShared:
    """Keeps ``agent_live`` in step with this node's live agents."""

    def __init__(self, db: StoreWorker, agents: AgentRegistry) -> None:
        self._db = db
        self._agents = agents
        self._due: dict[str, dict[str, object] | None] = {}  # None: the tunnel went
        self._wake = asyncio.Event()
        self._unsubscribe = agents.subscribe(self._changed)
        for live in agents.connected():  # those that came before this started
            self._changed(live.agent_id, True)
        self._writer = asyncio.create_task(self._write())

    def _changed(self, agent_id: str, online: bool) -> None:
        live = self._agents.get(agent_id) if online else None
        self._due.pop(agent_id, None)  # to the end: written in the order of changes
        self._due[agent_id] = live_details(live) if live is not None else None
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                agent_id = next(iter(self._due))
                details = self._due.pop(agent_id)
                try:
                    if details is None:
                        await self._db.run(Store.agent_live_gone, agent_id)
                    else:
                        await self._db.run(Store.agent_live_set, agent_id, details)
                except BrokerError as exc:  # the other nodes list it without them meanwhile
                    log.warning("agent=%s: live details not shared: %s", agent_id, exc)

    async def stop(self) -> None:
        self._unsubscribe()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
