"""Requests this node passes to the node that holds the agent or the session (#21).

With ``--node-listen`` on a shared store, a technician logged in here may ask for a
session on an agent whose tunnel another live node holds: the request, the end
button and the session's WebSocket go to that node (``relay/node_link.py``), which
serves them as its own console would, after the caller is authenticated here. A
request that came from another node is never passed on again.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from allowhelp.broker.console.api.base import services
from allowhelp.broker.errors import Conflict, NotFound
from allowhelp.broker.model.session import State
from allowhelp.broker.relay.node_link import FROM_NODE, NodeRoute
from allowhelp.broker.store import Store
from allowhelp.broker.store.node_peers import PeerNode


def _route(request: Request | WebSocket) -> NodeRoute | None:
    """This node's route to the others, unless the request came from one of them."""
    route = services(request).nodes
    return None if route is None or FROM_NODE in request.scope else route


async def _forward(request: Request, route: NodeRoute, node: PeerNode) -> Response:
    answer = await route.forward(
        node, request.method, request.url.path, dict(request.headers), await request.body()
    )
    return Response(answer.body, answer.status, media_type=answer.content_type)


async def create_elsewhere(request: Request, agent_id: str) -> Response | None:
    """``POST /api/v1/sessions`` for an agent another node holds: that node's answer."""
    route = _route(request)
    if route is None or services(request).registry.get(agent_id) is not None:
        return None
    node = await route.agent_node(agent_id)
    return None if node is None else await _forward(request, route, node)


async def end_elsewhere(request: Request, session_id: str) -> Response | None:
    """``POST /api/v1/sessions/{id}/end`` for a session another node runs."""
    route = _route(request)
    if route is None or services(request).sessions.live(session_id) is not None:
        return None
    node = await route.session_node(session_id)
    return None if node is None else await _forward(request, route, node)


async def attach_elsewhere(websocket: WebSocket, username: str, actor: str) -> bool:
    """The session's WebSocket relayed to the node running it; False when none does."""
    route = _route(websocket)
    session_id = websocket.path_params["session_id"]
    if route is None or services(websocket).sessions.live(session_id) is not None:
        return False
    node = await route.session_node(session_id)
    if node is None:
        return False
    session = await services(websocket).db.read(Store.session, session_id)
    if session is None or session.technician != username:
        raise NotFound("no such session")  # the other node would refuse it too
    if session.state is not State.ACTIVE:  # checked here first, and again there
        raise Conflict(f"the session is {session.state}, not active")
    await route.relay(websocket, node, actor=actor, session=session.summary())
    return True
