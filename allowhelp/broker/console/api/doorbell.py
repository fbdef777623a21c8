"""``POST /api/v1/agent/doorbell``: an idle agent's doorbell (docs/design.md "Doorbell").

The agent holds this one request open instead of its SSH tunnel; the answer is a
stream of JSON lines (``tunnel/doorbell.py``): beats, and a ring when an action
needs the PC, whereupon the agent starts its full process and dials the tunnel.
While the stream stands the agent is online (``tunnel/agents.py``).

Agents are not browsers: no cookie, no CSRF header; the key is in
``Authorization: Doorbell <agent_id>:<token>``, compared in constant time
against the sha256 the broker keeps (the key itself is never stored, logged or
audited). Every 401 and 403 goes to the audit chain through the tunnel's
refusal coalescer (``agent.refused``, reason ``doorbell``), as a refused SSH key
does. The body (the agent's last Hello) is read with a deadline and a 16 KiB cap
and checked by the control protocol's own rules.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from allowhelp.broker.console.answers import closing_answer
from allowhelp.broker.console.api.base import services
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import (
    AuditUnavailable,
    BadRequest,
    BrokerError,
    Forbidden,
    TooLarge,
    Unauthenticated,
)
from allowhelp.broker.store import Store
from allowhelp.broker.tunnel.agents import ONLINE
from allowhelp.broker.tunnel.doorbell import (
    BODY_DEADLINE,
    MAX_BODY,
    Bell,
    credentials,
    token_matches,
)
from allowhelp.protocol.control import Hello, hello_from
from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.text import ascii_digits

log = logging.getLogger(__name__)

PATH = "/api/v1/agent/doorbell"
REFUSED = "doorbell"  # agent.refused's reason for a doorbell's key


class DoorbellStream(StreamingResponse):
    """The stream of one bell; when it ends, however it ends (the agent gone, the
    bell ended, the client gone before the first line), the bell leaves the
    registry, and an agent that goes offline with it is recorded as disconnected."""

    def __init__(self, svc: Services, bell: Bell) -> None:
        super().__init__(
            bell.lines(),
            media_type="application/x-ndjson",
            headers={"x-accel-buffering": "no"},  # the wall adds cache-control: no-store
        )
        self._svc = svc
        self._bell = bell

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            bell = self._bell
            if self._svc.registry.ring_out(bell.agent_id, bell):
                self._svc.tunnel.connectivity.disconnected(
                    bell.agent_id, bell.peer, "doorbell closed"
                )
            log.debug("agent=%s doorbell from %s ended", bell.agent_id, bell.peer)


async def doorbell(request: Request) -> Response:
    svc = services(request)
    client = request.client
    address = client.host if client else "?"
    peer = f"{address}:{client.port} (doorbell)" if client else "? (doorbell)"
    try:
        agent_id = await _authorised(request, svc, address, peer)
        hello = hello_from_body(await _body(request))
        # a connect is on the record first, once per offline → online (agents.py arrive)
        admission = await svc.registry.arrive(
            agent_id, lambda: svc.tunnel.connectivity.connected(agent_id, peer)
        )
        if admission == "refused":
            raise AuditUnavailable("the doorbell could not be audited")
        connecting = admission != ONLINE
        # removed while its body or the record was awaited: no bell for it (the
        # removal closed what it found; nothing awaits between here and ``ring_in``)
        if svc.keys.is_removed(agent_id):
            if connecting:
                svc.tunnel.connectivity.disconnected(agent_id, peer, "removed")
            _refused(svc, agent_id, address, peer)
            raise Forbidden("this agent was removed", code="agent_removed")
    except BrokerError as exc:
        return closing_answer(exc)
    bell = Bell(agent_id, peer)
    svc.registry.ring_in(agent_id, bell, hello)
    log.debug("agent=%s doorbell from %s", agent_id, peer)
    return DoorbellStream(svc, bell)


async def _authorised(request: Request, svc: Services, address: str, peer: str) -> str:
    """The agent whose key this is; 401 (unknown, wrong key), 403 (removed)."""
    offered = credentials(request.headers.get("authorization"))
    agent_id = offered[0] if offered is not None else ""
    declared = request.headers.get("content-length", "")
    if ascii_digits(declared) and int(declared) > MAX_BODY:  # before any lookup
        raise TooLarge(f"the doorbell's body is limited to {MAX_BODY} bytes")
    known = await svc.db.read(Store.doorbell, agent_id) if offered is not None else None
    if offered is None or known is None or not token_matches(offered[1], known[1]):
        _refused(svc, agent_id, address, peer)
        raise Unauthenticated("unknown agent or wrong doorbell key", code="doorbell_key")
    if known[0]:
        _refused(svc, agent_id, address, peer)
        raise Forbidden("this agent was removed", code="agent_removed")
    return agent_id


def _refused(svc: Services, agent_id: str, address: str, peer: str) -> None:
    if svc.tunnel.connectivity.refused_key(agent_id, address, peer, REFUSED):
        log.warning("refused a doorbell for %s from %s", agent_id or "?", peer)


async def _body(request: Request) -> bytes:
    """The body, at most ``MAX_BODY`` bytes, within ``BODY_DEADLINE`` seconds."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip()
    if content_type.lower() != "application/json":
        raise BadRequest("the doorbell's body must be application/json", code="bad_hello")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_DEADLINE):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    raise TooLarge(f"the doorbell's body is limited to {MAX_BODY} bytes")
    except TimeoutError:
        raise BadRequest("the doorbell's body did not arrive in time", code="bad_hello") from None
    return bytes(body)


def hello_from_body(body: bytes) -> Hello:
    """``{"hello": {...}}`` → the Hello, or ``BadRequest`` saying why not."""
    try:
        raw = parse_json(body, "the doorbell's body")
        if not isinstance(raw, dict) or "hello" not in raw:
            raise ProtocolError('the doorbell\'s body must be {"hello": {...}}')
        return hello_from(raw["hello"])
    except ProtocolError as exc:
        raise BadRequest(str(exc), code="bad_hello") from None


def routes() -> list[BaseRoute]:
    return [Route(PATH, doorbell, methods=["POST"])]
