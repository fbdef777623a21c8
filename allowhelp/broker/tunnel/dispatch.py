"""Where each control message an agent sends goes: one route per message type.

The tunnel owns the routing (a message arrives on an agent's control channel
and is delivered in order by its ``AgentLink``); the parts that own each
message register a handler at start-up (``node/server.py``). What the tunnel
knows by itself, the agent's inventory (``Hello``), it handles here. A message
type with no route is one agents may not send: it is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from allowhelp.broker.errors import BrokerError, StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.batch import StoreBatch
from allowhelp.protocol.control import Hello, Message
from allowhelp.protocol.monitors import Monitor
from allowhelp.protocol.monitors import decode as decode_monitors
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[str, M], Awaitable[None]]


class ControlRouter:
    """Delivers an agent's control messages to the handler registered for their type."""

    def __init__(self) -> None:
        self._routes: dict[type[Message], Handler[Any]] = {}

    def route(self, message_type: type[M], handler: Handler[M]) -> None:
        if message_type in self._routes:
            raise ValueError(f"{message_type.__name__} already has a route")
        self._routes[message_type] = handler

    async def __call__(self, agent_id: str, message: Message) -> None:
        handler = self._routes.get(type(message))
        if handler is None:
            log.warning("agent=%s sent a %s, which agents may not send", agent_id, message.type)
            return
        try:
            await handler(agent_id, message)
        except BrokerError as exc:  # said where it happened (an audit refusal, owed, ...)
            log.error("agent=%s %s not taken: %s", agent_id, message.type, exc)


class Inventory:
    """What an agent says about its machine when it connects: host name, OS, user.

    Stored in the background: the agent's next messages (a consent decision)
    are delivered in order after this one, and must not wait for a slow or
    locked database.
    """

    def __init__(self, db: StoreWorker, agents: AgentRegistry) -> None:
        self._db = db
        self._rows = StoreBatch(db)  # many agents' hellos, one writer-thread call (batch.py)
        self._agents = agents
        self._tasks: set[asyncio.Task[None]] = set()

    async def hello(self, agent_id: str, message: Hello) -> None:
        live = self._agents.get(agent_id)
        if live is not None:  # at once: a request that comes next must know who is there
            live.system = message.system
            live.jobs = message.jobs
            live.chat = message.chat
            live.invites = message.invites
            live.nodes = message.nodes
            live.all_monitors = message.all_monitors
            live.user = plain_text(message.user, 64)
            live.language = message.language  # unknown ones get English words (phrase.py)
            live.screen = plain_text(message.screen, 20)
            live.screen_problem = plain_text(message.screen_problem, 300)
            live.desktop = plain_text(message.desktop, 200)
            live.monitors = reported_monitors(agent_id, message.monitors)
        task = asyncio.create_task(self._store(agent_id, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, agent_id: str, message: Hello) -> None:
        try:
            await self._rows.run(
                Store.update_agent_info,
                agent_id,
                plain_text(message.hostname, 253) or "(unnamed)",  # hostname
                plain_text(message.os, 200),
                plain_text(message.user, 64),
                plain_text(message.version, 32),
            )
        except StoreError as exc:
            log.error("agent=%s inventory not stored: %s", agent_id, exc)
            return
        self._agents.changed(agent_id)


def reported_monitors(agent_id: str, line: str) -> tuple[Monitor, ...]:
    """The monitors an agent's Hello lists; a malformed list counts as none (then a
    request can name no monitor: deny by default), said in the log."""
    try:
        return decode_monitors(line)
    except ValueError as exc:
        log.warning("agent=%s reported unreadable monitors: %s", agent_id, exc)
        return ()
