"""The audit side of the tunnel listener: connects, disconnects and refusals.

Every connect and disconnect goes to the bounded history table of the broker
database (with the peer address and the time; it also sets the agent's last
seen time). What goes to the chain is decided by the rules of
:mod:`allowhelp.broker.audit.flapping`: an agent's connects one by one until it
flaps, then one ``agent.flapping`` summary per window; refusals (``agent.refused``
for a key that is not enrolled, ``tunnel.refused`` for a failed handshake) once
per address per window, with a tally at the window's end.

Fail closed, as before: a connect whose chain record cannot be written is
refused, and so is one that would be recorded nowhere (a flapping agent's
connect when the history table cannot be written either). Disconnects and
refusals are facts, not permissions: their records follow them. The history
is written off the event loop (``ConnectivityHistory`` is async); only a
connect that is on no other record waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Literal, Protocol

from allowhelp.broker.audit.flapping import OVERFLOW_KEY, Coalescer, FlapGate, FlapSummary, Tally
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AuditUnavailable, StoreError

log = logging.getLogger(__name__)

# What became of a connect: in the chain, counted in the history only, or refused.
ConnectRecorded = Literal["chained", "counted", "refused"]
PRUNE_EVERY = 3600.0  # seconds between two age prunings of the history table
STOP_TIMEOUT = 5.0


class ConnectivityHistory(Protocol):
    """Where connects and disconnects are kept (the store's history table, written
    off the event loop); both raise ``StoreError`` when the database fails."""

    async def record_connectivity(
        self,
        agent_id: str,
        event: Literal["connected", "disconnected"],
        remote: str,
        reason: str,
        when: float,
    ) -> None: ...

    async def prune_connectivity(self, now: float) -> int: ...


class ConnectivityAudit:
    def __init__(
        self,
        audit: AuditLog,
        history: ConnectivityHistory,
        *,
        window: float,
        burst: int,
        online: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._history = history
        self._online = online
        self._clock = clock
        self.window = window
        self._gate = FlapGate(window, burst)
        self._keys = Coalescer(window)  # agent.refused, per key and address
        self._handshakes = Coalescer(window)  # tunnel.refused, per address
        self._tasks: set[asyncio.Task[None]] = set()
        # A disconnect record still on its way, per agent: the next connect waits
        # for it, so the chain never says connected before the disconnect it follows.
        self._leaving: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def connected(self, agent_id: str, peer: str) -> ConnectRecorded:
        """Record a finished handshake before the agent is attached."""
        leaving = self._leaving.get(agent_id)
        if leaving is not None:
            await asyncio.wait({leaving})
        wall = time.time()
        chain, summary = self._gate.connected(agent_id, peer, self._clock(), wall)
        try:
            if chain:
                await self._write(
                    "agent.connected", f"agent:{agent_id}", agent_id, {"remote": peer}
                )
            elif summary is not None:
                await self._flapping(summary, online=True)
        except AuditUnavailable as exc:
            log.error("agent=%s refused: its connection could not be audited: %s", agent_id, exc)
            return "refused"
        if chain or summary is not None:  # on the record: the history need not hold it up
            self._spawn(self._keep(agent_id, "connected", peer, "", wall))
            return "chained"
        if not await self._store(agent_id, "connected", peer, "", wall):
            log.error("agent=%s refused: its connection could be recorded nowhere", agent_id)
            return "refused"
        return "counted"

    def replaced(self, agent_id: str, peer: str) -> None:
        """A tunnel replacing an online agent's older one: no offline → online, so
        not chained; kept in the history (the newest connect says which node holds
        the agent's tunnel, ``store/fleet.py``)."""
        self._spawn(self._keep(agent_id, "connected", peer, "replaced", time.time()))

    def disconnected(self, agent_id: str, peer: str, reason: str) -> bool:
        """Record a lost tunnel (it is gone already); True when it is chained."""
        wall = time.time()
        self._spawn(self._keep(agent_id, "disconnected", peer, reason, wall))
        chain, summary = self._gate.disconnected(agent_id, self._clock(), wall)
        if chain:
            details: dict[str, object] = {"reason": reason, "remote": peer}
            record = self._quiet("agent.disconnected", f"agent:{agent_id}", agent_id, details)
            self._leave(agent_id, self._spawn(record))
        elif summary is not None:
            self._leave(agent_id, self._spawn(self._flapping_quiet(summary, online=False)))
        return chain

    def _leave(self, agent_id: str, task: asyncio.Task[None]) -> None:
        self._leaving[agent_id] = task
        task.add_done_callback(
            lambda _: self._leaving.pop(agent_id) if self._leaving.get(agent_id) is task else None
        )

    def refused_key(self, agent_id: str, address: str, peer: str, reason: str) -> bool:
        """A key that is not (or no longer) enrolled tried to connect; True when
        this one is chained on its own (the first of its window)."""
        key = self._keys.hit(f"{agent_id}@{address}", reason, self._clock(), time.time())
        if key is None:
            return False
        target = "" if key == OVERFLOW_KEY else agent_id
        details: dict[str, object] = {"reason": reason, "remote": peer, "count": 1}
        self._spawn(self._quiet("agent.refused", "system", target, details))
        return True

    def handshake_failed(self, address: str, peer: str, reason: str) -> bool:
        """A tunnel connection that never became an agent (timeout, bad SSH, cut);
        True when this one is chained on its own (the first of its window)."""
        key = self._handshakes.hit(address, reason, self._clock(), time.time())
        if key is None:
            return False
        target = "" if key == OVERFLOW_KEY else address
        details: dict[str, object] = {"reason": reason, "remote": peer, "count": 1}
        self._spawn(self._quiet("tunnel.refused", "system", target, details))
        return True

    async def stop(self) -> None:
        """Write every pending summary and wait for the records in flight."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if not self._stopped:
            self._stopped = True
            online = self._online
            for summary in self._gate.flush():
                self._spawn(self._flapping_quiet(summary, online=online(summary.agent_id)))
            self._tallies(self._keys.flush(), self._handshakes.flush())
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT)

    # internals

    async def _store(
        self,
        agent_id: str,
        event: Literal["connected", "disconnected"],
        peer: str,
        reason: str,
        wall: float,
    ) -> bool:
        try:
            await self._history.record_connectivity(agent_id, event, peer, reason, wall)
        except StoreError as exc:
            log.error("agent=%s %s not kept in the connectivity history: %s", agent_id, event, exc)
            return False
        return True

    async def _keep(
        self,
        agent_id: str,
        event: Literal["connected", "disconnected"],
        peer: str,
        reason: str,
        wall: float,
    ) -> None:
        """``_store`` in the background: a fact that is on the record, or already
        happened, does not wait for the history table."""
        await self._store(agent_id, event, peer, reason, wall)

    async def _write(self, type: str, actor: str, target: str, details: dict[str, object]) -> None:
        await self._audit.write(type, actor=actor, target=target, details=details)

    async def _quiet(self, type: str, actor: str, target: str, details: dict[str, object]) -> None:
        """A record that follows its fact: a refusal is logged, nothing else."""
        try:
            await self._write(type, actor, target, details)
        except AuditUnavailable as exc:
            log.error("%s about %r could not be audited: %s", type, target or "?", exc)

    async def _flapping(self, summary: FlapSummary, *, online: bool) -> None:
        if summary.state == "started":
            log.warning(
                "agent=%s is flapping (%d connects in %g s, last from %s): its connects are "
                "summed up in the audit log once per %g s, each kept in its history",
                summary.agent_id,
                summary.connects,
                self.window,
                summary.remote,
                self.window,
            )
        details = summary.details(online)
        await self._write("agent.flapping", "system", summary.agent_id, details)

    async def _flapping_quiet(self, summary: FlapSummary, *, online: bool) -> None:
        with contextlib.suppress(AuditUnavailable):  # logged by the writer already
            await self._flapping(summary, online=online)

    def _tallies(self, *groups: list[Tally]) -> None:
        for kind, tallies in zip(("agent.refused", "tunnel.refused"), groups, strict=True):
            for tally in tallies:
                target = tally.key
                details = tally.details()
                if kind == "agent.refused" and tally.key != OVERFLOW_KEY:
                    target, _, address = tally.key.rpartition("@")
                    details["remote"] = address
                if tally.key == OVERFLOW_KEY:
                    target = ""
                log.warning(
                    "%s: %d more from %s in the last %g s (%s)",
                    kind,
                    tally.count,
                    target or f"{tally.keys} other addresses",
                    self.window,
                    ", ".join(f"{r}: {n}" for r, n in tally.reasons.items()),
                )
                self._spawn(self._quiet(kind, "system", target, details))

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(30.0, self.window / 10))
        pruned = -PRUNE_EVERY
        while True:
            now = self._clock()
            for summary in self._gate.due(now):
                self._spawn(self._flapping_quiet(summary, online=self._online(summary.agent_id)))
            self._tallies(self._keys.due(now), self._handshakes.due(now))
            if now - pruned >= PRUNE_EVERY:
                pruned = now
                try:
                    gone = await self._history.prune_connectivity(time.time())
                except StoreError as exc:
                    log.warning("connectivity history not pruned: %s", exc)
                else:
                    if gone:
                        log.info("connectivity history: %d old events dropped", gone)
            await asyncio.sleep(interval)

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
