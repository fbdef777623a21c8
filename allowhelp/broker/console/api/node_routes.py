"""Requests this node passes to the node that holds the agent or runs the session (#21).

With ``--node-listen`` on a shared store, a technician logged in here may ask for a
session on an agent whose tunnel another live node holds: the request, and then
everything about that session (its end, notes, files, chat, invitations, and its
WebSocket) goes to the node running it (``relay/node_link.py``), which serves them as
its own console would, after the caller is authenticated here. Who may do what to
the session is the other node's to decide (its technician's rights, an invitation
the PC user allowed); of the browser's cookies only allowhelp's session cookie goes
along. A request that came from another node is never passed on again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket

from allowhelp.broker.auth.authenticator import COOKIE_NAME
from allowhelp.broker.console.api.base import require, services
from allowhelp.broker.errors import AgentUnreachable, BrokerError, NotFound
from allowhelp.broker.relay.node_link import FROM_NODE, NodeRoute
from allowhelp.broker.store.node_peers import AgentElsewhere, PeerNode

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
INVITED_WAIT = 5.0  # seconds a session list waits for another node's invitations
INVITED_MAX = 1 << 20  # bytes of one node's answer: a list of invitee views, never more


def _route(request: Request | WebSocket) -> NodeRoute | None:
    """This node's route to the others, unless the request came from one of them."""
    route = services(request).nodes
    return None if route is None or FROM_NODE in request.scope else route


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():  # as it comes: an upload is never whole here
        yield chunk


def _target(request: Request | WebSocket) -> str:
    """The path and query as the technician sent them (still percent-encoded)."""
    path = bytes(request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    query = request.url.query
    return path + (f"?{query}" if query else "")


def _own_cookie(request: Request | WebSocket) -> str:
    """Of the browser's cookies, allowhelp's own session cookie alone: the others are
    between the browser and this site (another app on the host, a tracker), none of
    the other node's business."""
    value = request.cookies.get(COOKIE_NAME)
    return f"{COOKIE_NAME}={value}" if value else ""


def _headers(request: Request) -> dict[str, str]:
    headers = {name: value for name, value in request.headers.items() if name != "cookie"}
    if cookie := _own_cookie(request):
        headers["cookie"] = cookie
    return headers


async def _nothing() -> AsyncIterator[bytes]:
    yield b""


def came_from_node(request: Request) -> bool:
    """Whether another node passed this request on (it is served, never passed again)."""
    return FROM_NODE in request.scope


async def invited_elsewhere(request: Request, actor: str) -> list[dict[str, object]]:
    """The caller's invitations (#18) into sessions other live nodes run: each such
    node's invitee views for them, as its own ``GET /api/v1/sessions`` answers a node.

    Best effort, like the events that keep the page current afterwards: a node that
    does not answer within ``INVITED_WAIT`` is left out of this list (logged)."""
    route = _route(request)
    if route is None:
        return []
    try:
        peers = await route.session_peers()
    except BrokerError as exc:  # this node's own rows are listed all the same
        log.warning("the nodes running sessions are not known now: %s", exc)
        return []
    found = await asyncio.gather(*(_invited_at(request, route, node, actor) for node in peers))
    return [view for views in found for view in views]


async def _invited_at(
    request: Request, route: NodeRoute, node: PeerNode, actor: str
) -> list[dict[str, object]]:
    try:
        return await asyncio.wait_for(_ask_invited(request, route, node, actor), INVITED_WAIT)
    except (BrokerError, TimeoutError, ValueError) as exc:
        log.warning("node %s did not list its invitations: %s", node.id, str(exc) or "timed out")
        return []


async def _ask_invited(
    request: Request, route: NodeRoute, node: PeerNode, actor: str
) -> list[dict[str, object]]:
    answer = await route.forward(
        node, "GET", "/api/v1/sessions", _headers(request), _nothing(), actor=actor, about={}
    )
    text = bytearray()
    try:
        async for chunk in answer.body:
            text += chunk
            if len(text) > INVITED_MAX:
                raise ValueError(f"an answer over {INVITED_MAX} bytes")
    finally:
        close = getattr(answer.body, "aclose", None)
        if close is not None:
            await close()
    if answer.status != 200:
        raise ValueError(f"HTTP {answer.status}")
    return invitee_views_of(bytes(text))


def invitee_views_of(text: bytes) -> list[dict[str, object]]:
    """Another node's invitee views, or ValueError: a list of JSON objects with an id,
    nothing JSONResponse could not send again (NaN) nor nested past Python's stack."""
    try:
        views = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deep") from None
    if not isinstance(views, list) or not all(
        isinstance(v, dict) and isinstance(v.get("id"), str) for v in views
    ):
        raise ValueError("not a list of sessions")
    return views


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} in a node's answer")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: what JSONResponse would refuse to send on
        raise ValueError(f"{text} in a node's answer")
    return number


async def _forward(
    request: Request, route: NodeRoute, node: PeerNode, actor: str, about: dict[str, str]
) -> Response:
    answer = await route.forward(
        node,
        request.method,
        _target(request),
        _headers(request),
        _body(request),
        actor=actor,
        about=about,
    )
    return StreamingResponse(answer.body, status_code=answer.status, headers=answer.headers)


# The agent list's fields that come from the agent's hello (``console/api/fleet.py``).
LIVE_FIELDS = (
    "system",
    "signed_in",
    "screen",
    "screen_problem",
    "desktop",
    "monitors",
    "all_monitors",
)


def listed_elsewhere(found: AgentElsewhere) -> dict[str, object]:
    """An agent list row's live fields for an agent another node holds: online there,
    and what it said in its hello as that node wrote it (``node/live_agents.py``)."""
    row: dict[str, object] = {"online": True, "node": found.node_id}
    row.update({name: found.details[name] for name in LIVE_FIELDS if name in found.details})
    return row


async def create_elsewhere(request: Request, actor: str, agent_id: str) -> Response | None:
    """``POST /api/v1/sessions`` for an agent another node holds: that node's answer."""
    route = _route(request)
    if route is None or services(request).registry.get(agent_id) is not None:
        return None
    node = await route.agent_node(agent_id)
    if node is None:
        return None
    return await _forward(request, route, node, actor, {"agent_id": agent_id})


def or_elsewhere(endpoint: Endpoint, *, read: bool = False) -> Endpoint:
    """A session's endpoint, served by the node that runs the session when another
    live node does (the caller authenticated here first, and again there).

    ``read``: the endpoint only reads what the store holds too, so a node that cannot
    be reached (gone, its heartbeat not yet stale) leaves it to this node."""

    async def routed(request: Request) -> Response:
        route = _route(request)
        session_id = request.path_params["session_id"]
        tried: str | None = None  # a node already found unreachable for this request
        if route is not None and services(request).sessions.live(session_id) is None:
            # Where first: the endpoint served here authenticates the caller itself, so
            # the caller's login is read once whichever node serves the request.
            found = await route.session_node(session_id)
            if found is not None:
                principal = await require(request)
                about = {"session": session_id}
                try:
                    return await _forward(request, route, found.node, principal.actor, about)
                except AgentUnreachable as exc:
                    if not read:
                        raise
                    log.warning("session %s: served here: %s", session_id, exc)
                    tried = found.node.id
        try:
            return await endpoint(request)
        except NotFound:
            if not read or route is None:
                raise
            ran = await _ran_elsewhere(request, route, session_id, tried)
            if ran is None:
                raise
            return ran

    return routed


async def _ran_elsewhere(
    request: Request, route: NodeRoute, session_id: str, tried: str | None
) -> Response | None:
    """A read this node answers "no such session" to, served by the live node that ran
    the session (ended there, or not yet listed as open): that node keeps its
    invitations in memory, so an invitee's page of an ended session is its to show.
    Not a node this request already found unreachable (``tried``)."""
    node = await route.session_ran_by(session_id)
    if node is None or node.id == tried:
        return None
    principal = await require(request)
    try:
        return await _forward(request, route, node, principal.actor, {"session": session_id})
    except AgentUnreachable as exc:
        log.warning("session %s: not asked of node %s: %s", session_id, node.id, exc)
        return None


async def attach_elsewhere(websocket: WebSocket, actor: str) -> bool:
    """The session's WebSocket relayed to the node running it; False when none does.

    Whoever is logged in here is relayed: the session's technician, an invitee
    (#18), anyone else. The node running the session decides with its own rules
    (its technician, or an invitation the PC user allowed; anyone else refused and
    ``participant.refused`` on its record): this node knows no invitation."""
    route = _route(websocket)
    session_id = websocket.path_params["session_id"]
    if route is None or services(websocket).sessions.live(session_id) is not None:
        return False
    found = await route.session_node(session_id)  # the node and the session, one read
    if found is None:
        return False
    await route.relay(
        websocket,
        found.node,
        _target(websocket),
        actor=actor,
        session=found.session.summary(),
        cookie=_own_cookie(websocket),
    )
    return True
