"""WS /api/v1/events: the console's one live feed (no polling in the page).

Server → page, JSON text frames: ``{"type": "hello", ...}`` first, then
``{"type": "agent", "agent": {...}}`` (a row as GET /api/v1/agents gives it),
``{"type": "session", "session": {...}}`` and ``{"type": "help_request", ...}``
as the hub publishes them. The page sends nothing but an occasional small
ping; anything over ``MAX_CLIENT_MESSAGE`` bytes closes the socket with 1009.

The web session is checked again every ``RECHECK`` seconds and the socket
closes with 1008 as soon as it is no longer valid; logout and disabling a
user close it at once through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from allowhelp.broker.auth.authenticator import COOKIE_NAME
from allowhelp.broker.console.answers import CloseCode
from allowhelp.broker.console.api.base import services, websocket_principal
from allowhelp.broker.console.api.fleet import agent_row
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import StoreError
from allowhelp.broker.sessions.events import Subscriber
from allowhelp.broker.store import Store

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE = 4096
RECHECK = 30.0


def publish_agent_changes(svc: Services) -> Callable[[], None]:
    """Tell every console when a machine comes online or goes offline.

    The agent registry calls back synchronously (in the middle of a connect or
    a disconnect), so the machine's row is read in a task of its own: off the
    event loop, and not in the tunnel's way.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def publish(agent_id: str) -> None:
        try:
            record = await svc.db.read(Store.agent, agent_id)
        except StoreError as exc:
            log.warning("events: agent=%s change not published: %s", agent_id, exc)
            return
        if record is not None:  # online is read now, as it is when the row goes out
            svc.events.publish({"type": "agent", "agent": agent_row(svc, record)})

    def changed(agent_id: str, online: bool) -> None:
        if not svc.events.heard():  # no console open: no row to read (a storm's 2 per agent)
            return
        task = asyncio.get_running_loop().create_task(publish(agent_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return svc.registry.subscribe(changed)


async def events_socket(websocket: WebSocket) -> None:
    principal = await websocket_principal(websocket)  # or Unauthenticated: refused before accept
    svc = services(websocket)
    user = principal.user
    await websocket.accept()
    subscriber = svc.events.subscribe(
        user.username, user.role == "admin", principal.session.token_hash
    )
    reader = asyncio.create_task(_read(websocket))
    try:
        await websocket.send_json({"type": "hello", "user": user.username, "role": user.role})
        code = await _pump(websocket, subscriber, reader, svc)
    except WebSocketDisconnect:
        code = None
    finally:
        svc.events.unsubscribe(subscriber)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    if code is not None:
        with contextlib.suppress(Exception):
            await websocket.close(int(code))


async def _pump(
    websocket: WebSocket,
    subscriber: Subscriber,
    reader: asyncio.Task[CloseCode | None],
    svc: Services,
) -> CloseCode | None:
    """Forward events until the page goes, the hub closes us, or the session ends."""
    cookie = websocket.cookies.get(COOKIE_NAME)
    while True:
        getter = asyncio.create_task(subscriber.queue.get())
        done, _ = await asyncio.wait(
            {getter, reader}, timeout=RECHECK, return_when=asyncio.FIRST_COMPLETED
        )
        if reader in done:
            getter.cancel()
            return reader.result()
        if getter not in done:
            getter.cancel()
            if not await _still_valid(svc, cookie):
                return CloseCode.POLICY
            continue
        event = getter.result()
        if event is None:  # the hub closed us: fell behind, logged out or disabled
            return CloseCode.TRY_AGAIN if subscriber.dropped else CloseCode.POLICY
        await websocket.send_text(json.dumps(event, separators=(",", ":")))


async def _still_valid(svc: Services, cookie: str | None) -> bool:
    """Whether the web session still holds; kept when the database cannot say
    (logout and disabling close the socket through the hub anyway)."""
    try:
        return await svc.auth.principal(cookie) is not None
    except StoreError as exc:
        log.warning("events: web session not rechecked: %s", exc)
        return True


async def _read(websocket: WebSocket) -> CloseCode | None:
    """Drain what the page sends; the close code to use, or None when it left."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        size = len(message.get("text") or "") + len(message.get("bytes") or b"")
        if size > MAX_CLIENT_MESSAGE:
            log.warning("events: closing a console that sent %d bytes", size)
            return CloseCode.TOO_BIG


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/api/v1/events", events_socket)]
