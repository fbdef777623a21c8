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

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket

from allowhelp.broker.auth.authenticator import COOKIE_NAME
from allowhelp.broker.console.api.base import require, services
from allowhelp.broker.relay.node_link import FROM_NODE, NodeRoute
from allowhelp.broker.store.node_peers import AgentElsewhere, PeerNode

Endpoint = Callable[[Request], Awaitable[Response]]


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


def or_elsewhere(endpoint: Endpoint) -> Endpoint:
    """A session's endpoint, served by the node that runs the session when another
    live node does (the caller authenticated here first, and again there)."""

    async def routed(request: Request) -> Response:
        route = _route(request)
        session_id = request.path_params["session_id"]
        if route is not None and services(request).sessions.live(session_id) is None:
            # Where first: the endpoint served here authenticates the caller itself, so
            # the caller's login is read once whichever node serves the request.
            found = await route.session_node(session_id)
            if found is not None:
                principal = await require(request)
                about = {"session": session_id}
                return await _forward(request, route, found.node, principal.actor, about)
        return await endpoint(request)

    return routed


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
