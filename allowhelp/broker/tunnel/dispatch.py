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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from allowhelp.broker.errors import BrokerError, StoreError, TunnelError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.batch import StoreBatch
from allowhelp.broker.tunnel.doorbell import new_token, token_hash
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import DoorbellKey, Hello, Message
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
            live.said(message)
            self._agents.greeted(agent_id)  # a woken agent is asked now (agents.py wake)
            if message.doorbell == "need" and live.link is not None:
                self._spawn(self._doorbell_key(agent_id, live.link))
        self._spawn(self._store(agent_id, message))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _doorbell_key(self, agent_id: str, link: AgentLink) -> None:
        """A new doorbell key for an agent whose Hello says it needs one: its hash is
        stored first (the old key stops working), then the key goes over the tunnel
        it came from. Never logged."""
        token = new_token()
        try:
            stored = await self._db.run(Store.set_doorbell_hash, agent_id, token_hash(token))
        except StoreError as exc:
            log.error("agent=%s no doorbell key: it could not be stored: %s", agent_id, exc)
            return
        if not stored:  # removed meanwhile: no key
            return
        try:
            link.send(DoorbellKey(token=token))
        except TunnelError as exc:  # gone meanwhile: its next Hello asks again
            log.info("agent=%s doorbell key not sent: %s", agent_id, exc)
            return
        log.info("agent=%s was sent a new doorbell key", agent_id)

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
