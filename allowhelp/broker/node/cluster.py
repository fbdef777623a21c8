"""This broker as one node of several sharing a database (#21, docs/multinode.md).

Every serving broker is a node: an id kept in its data folder (``node.id``,
made at first start; a copied folder must not carry it), a row in the
database with a heartbeat every few seconds, and the sessions and agent
tunnels it holds (``store/nodes.py``). On start a node ends its own earlier
run's open sessions as ``broker_restart``; a node whose heartbeat stopped has
its open sessions claimed and ended by a live node. With ``--store``, the
enrolled keys are read again each beat, so an agent enrolled (or removed) on
another node is known here too (``tunnel/keys.py``), and the live tunnel of an
agent removed on another node is dropped here, audited (``agent.tunnel.dropped``).
So is the tunnel of an agent that dialled another node since: an agent has one
tunnel, its newest, across nodes as within one (``AgentRegistry.attach``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AuditUnavailable, BrokerError, Conflict
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.node.datafolder import NODE_FILE
from allowhelp.broker.node.peers import NodeAnnouncer
from allowhelp.broker.sessions.events import Event, EventHub
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.store import AgentRecord, Store
from allowhelp.broker.store.nodes import NODE_STALE, NodeRecord
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry, LiveAgent
from allowhelp.broker.tunnel.doorbell import Bell
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import NodesList

if TYPE_CHECKING:  # psycopg is imported only on a PostgreSQL store
    from allowhelp.broker.store.pg_events import NodeEvents

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between heartbeats (a node is dead after NODE_STALE)
# Seconds without a heartbeat after which a node on a shared database stops its own
# sessions' access: before the other nodes take it for dead and end them in the store.
CUT_OFF = NODE_STALE * 2 / 3
CUT_OFF_CHECK = 1.0  # seconds between two looks at the last heartbeat's age


def node_id_of(data_dir: Path) -> str:
    """This node's id, made once (owner-only) and kept in the data folder."""
    path = data_dir / NODE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if len(text) == 32 and all(ch in "0123456789abcdef" for ch in text):
        return text
    node_id = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(node_id + "\n")
    tmp.replace(path)
    return node_id


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeMembership:
    """Joins the database's nodes, beats, sweeps dead nodes' sessions, leaves."""

    def __init__(
        self,
        db: StoreWorker,
        sessions: SessionRegistry,
        keys: EnrolledKeys,
        *,
        store: PostgresUrl | None,
        events: EventHub,
        announcer: NodeAnnouncer | None = None,
        agents: AgentRegistry | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._keys = keys
        self._shared = store is not None  # on PostgreSQL, with other nodes (not one SQLite file)
        self._store = store
        self._hub = events
        self._node_events: NodeEvents | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the beat, and the cut-off watch
        self._last_beat = 0.0  # the event loop's time of the last heartbeat written
        self._addresses = ("", "")  # (console URL, tunnel) as given to join
        self._announcer = announcer  # tells agents the live nodes (node/peers.py)
        self._agents = agents  # the tunnels this node holds: a removed agent's is dropped
        self._audit = audit
        # agents another node named as holding their newest tunnel at the last beat,
        # with the link this node held then: dropped if the next beat says so again
        self._superseded: dict[str, AgentLink | Bell | None] = {}

    @property
    def node_id(self) -> str:
        return self._db.node_id

    async def join(self, https: str, tunnel: str, recordings: Path | None) -> None:
        """Refuse an id a live node on another host (or process here) holds;
        then this node's row, fresh; then its earlier run's open sessions end as
        broker_restart (their recordings in ``recordings``); then the beat starts."""
        await self._enter(https, tunnel)
        if self._shared:  # an end owed while cut off is not written after another node's
            self._sessions.guard_late_ends(self._late_end)
        await self._sessions.recover(recordings)
        self._last_beat = asyncio.get_running_loop().time()
        self._tasks.append(asyncio.create_task(self._beat()))
        if self._shared:
            self._tasks.append(asyncio.create_task(self._watch()))
        if self._store is not None:  # console events to and from the other nodes
            loop = asyncio.get_running_loop()

            def deliver(event: Event, audience: str | None) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                    loop.call_soon_threadsafe(self._hub.publish_from_node, event, audience)

            from allowhelp.broker.store.pg_events import NodeEvents  # noqa: PLC0415 - psycopg

            self._node_events = NodeEvents(self._store, self.node_id, deliver)
            self._node_events.start()
            self._hub.relay_to(self._node_events.send)

    async def _enter(self, https: str, tunnel: str) -> None:
        self._addresses = (https, tunnel)
        host = socket.gethostname()
        for node in await self._db.read(Store.nodes):
            if node.id != self.node_id or node.age >= NODE_STALE:
                continue
            if node.host != host or (node.pid != os.getpid() and _alive_here(node.pid)):
                raise Conflict(
                    f"another broker node ({node.host}, pid {node.pid}) runs with node id "
                    f"{node.id}, seen {node.age:.0f} s ago: was this data folder copied with "
                    f"its {NODE_FILE}? Delete {NODE_FILE} on the copy (docs/multinode.md)"
                )
        record = NodeRecord(self.node_id, host, os.getpid(), https, tunnel, 0.0, 0.0, 0.0)
        await self._db.run(Store.node_started, record)
        log.info("broker node %s joined", self.node_id)

    async def advertise(self, https: str, tunnel: str) -> None:
        """Where agents reach this node, once its listeners are up: the public URL and
        the public tunnel address ("off": none), for the other nodes' agents to fail
        over to (``node/peers.py``)."""
        self._addresses = (https, tunnel)
        record = NodeRecord(self.node_id, socket.gethostname(), os.getpid(), https, tunnel, 0, 0, 0)
        await self._db.run(Store.node_started, record)
        await self._announce()

    def agent_nodes(self) -> NodesList | None:
        """The live nodes' addresses for a PC enrolling now (``tunnel/enrolment.py``);
        None alone on SQLite (no other node)."""
        if not self._shared or self._announcer is None:
            return None
        return self._announcer.current

    async def _announce(self) -> None:
        if self._shared and self._announcer is not None:
            self._announcer.update(await self._db.read(Store.nodes))

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._heartbeat()
            except BrokerError as exc:  # the database away: the next beat tries again
                log.warning("node heartbeat failed: %s", exc)
                continue
            self._last_beat = loop.time()  # the heartbeat alone says whether it is cut off
            try:
                await self._duties()
            except BrokerError as exc:  # the next beat does them again
                log.warning("node duties failed (the heartbeat stands): %s", exc)

    async def _watch(self) -> None:
        """The cut-off rule, on a clock of its own: CUT_OFF s without a heartbeat
        written, however the beats fail (at once, or each after its deadline), and
        this node stops its sessions before the others take it for dead."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CUT_OFF_CHECK)
            if loop.time() - self._last_beat > CUT_OFF:
                await self._cut_off()

    async def _cut_off(self) -> None:
        """Cut off from the shared database: stop every session's access now (ending
        stops a relay before its record), as the other nodes are about to end them.
        The end record the log cannot take yet is owed: the session book writes it
        once the database is back, or lets it go if another node ended the session
        meanwhile (``SessionBook._record_owed_end``, ``_late_end``)."""
        live = self._sessions.live_sessions()  # less those stopped already, their end owed
        stopping = [session.id for session in live if not self._sessions.ending(session.id)]
        for session_id in stopping:
            log.error("session=%s stopped: this node lost the database", session_id)
        # all at once: one end waiting on the audit log must not hold up the others' stop
        await asyncio.gather(*(self._stop(session_id) for session_id in stopping))

    async def _stop(self, session_id: str) -> None:
        with contextlib.suppress(BrokerError):  # the end record waits for the database
            await self._sessions.end_quietly(session_id, reason="broker_restart", actor="system")

    async def _heartbeat(self) -> None:
        if not await self._db.run(Store.node_heartbeat, self.node_id):
            log.warning("node %s was taken for dead; joining again", self.node_id)
            await self._enter(*self._addresses)

    async def _duties(self) -> None:
        """What each beat does besides beating: keys, fences, the node list, dead
        nodes' sessions. A failure here is not losing the database."""
        if not self._shared:
            return
        records = await self._db.read(Store.agents, with_removed=True)
        self._keys.reload(records)
        await self._drop_removed(records)
        await self._drop_superseded(await self._db.read(Store.agents_elsewhere))
        await self._announce()
        ended = await self._sessions.recover(None, own=False)
        if ended:
            log.warning("%d session(s) of a dead node ended as broker_restart", ended)

    async def _late_end(self, session_id: str) -> bool:
        """May this node write the end it owes for a session it stopped while cut off?
        Not when another node took this one for dead and ended the session meanwhile
        (``Store.hold_late_end``); not yet (``AuditUnavailable``: retried) while the
        store cannot say, so an end is never dropped without the other's record."""
        try:
            held = await self._db.run(Store.hold_late_end, session_id)
        except BrokerError as exc:
            raise AuditUnavailable(f"cannot tell whether another node ended it: {exc}") from exc
        if held is None:
            raise AuditUnavailable("this node was taken for dead: it joins again first")
        return held

    async def _drop_removed(self, records: list[AgentRecord]) -> None:
        """The live tunnels here of agents removed (on another node: this node's own
        removals close theirs at once, ``console/api/fleet.py``)."""
        if self._agents is None:
            return
        for record in records:
            live = self._agents.get(record.id) if record.removed else None
            if live is not None:
                log.warning(
                    "agent=%s was removed on another node: its tunnel is dropped", record.id
                )
                await self._drop(live, {"reason": "removed"})

    async def _drop_superseded(self, elsewhere: dict[str, str]) -> None:
        """Two nodes claiming one agent: the tunnels here of agents whose newest
        tunnel another live node holds (each connect writes its node into the
        agent's ``agent_nodes`` row: ``Store.agents_elsewhere``). Dropped when two
        beats in a row say so for the same link (so this node's own connect, written
        a moment after the other's, is never taken for the older one); a cloned PC
        dialling two nodes shows as these records again and again."""
        if self._agents is None:
            return
        seen: dict[str, AgentLink | Bell | None] = {}
        for agent_id, node_id in elsewhere.items():
            live = self._agents.get(agent_id)
            if live is None:
                continue
            if self._superseded.get(agent_id) is not live.holder:
                seen[agent_id] = live.holder
                continue
            log.warning(
                "agent=%s dialled node %s since: its older tunnel here is dropped",
                agent_id,
                node_id,
            )
            await self._drop(
                live, {"reason": "held_elsewhere", "holder": node_id}, holder=live.holder
            )
        self._superseded = seen

    async def _drop(
        self,
        live: LiveAgent,
        details: dict[str, object],
        *,
        holder: AgentLink | Bell | None = None,
    ) -> None:
        """Audited, then closed. Closing is stopping access, so it happens even when
        the audit cannot take the record (said in the log); the agent's sessions end
        with it. With ``holder``, only that tunnel (or doorbell): one the agent
        dialled here while the record was written is not the one judged older."""
        details = {**details, "node": self.node_id, "peer": live.peer}
        try:
            if self._audit is not None:
                await self._audit.write(
                    "agent.tunnel.dropped", actor="system", target=live.agent_id, details=details
                )
        except AuditUnavailable as exc:
            log.error("agent=%s tunnel dropped, not audited: %s", live.agent_id, exc)
        now = self._agents.get(live.agent_id) if self._agents is not None else None
        if now is None:  # gone meanwhile
            return
        if holder is not None and now.holder is not holder:
            log.warning("agent=%s dialled here again: its newer tunnel stays", now.agent_id)
            return
        now.close()  # its tunnel and its doorbell, as they are after the await

    async def close(self) -> None:
        """Stop beating and leave: this node's row and agent rows go."""
        if self._node_events is not None:
            self._hub.relay_to(None)
            await asyncio.to_thread(self._node_events.close)
            self._node_events = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            await self._db.run(Store.node_stopped, self.node_id)
        except BrokerError as exc:
            log.warning("node %s could not leave cleanly: %s", self.node_id, exc)
