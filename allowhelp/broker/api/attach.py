"""What the terminal and screen WebSockets share: who may attach, and how to close.

A session's socket may be attached only by the technician the PC user
consented to (an admin included: the consent named someone else), only to an
active session of the right kind, only while the machine is online, and only
once at a time: a second tab is refused rather than ending the first one's
session.
"""

from __future__ import annotations

import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from allowhelp.protocol.control import Kind

from ..agentlink import AgentLink
from ..services import Services
from ..session import Session, State
from .base import websocket_principal

log = logging.getLogger(__name__)

POLICY = 1008
NORMAL = 1000
INTERNAL = 1011
MAX_CLOSE_REASON = 123  # bytes, by RFC 6455
OPEN_TIMEOUT = 20.0


def close_reason(text: str) -> str:
    """``text`` cut to what a WebSocket close frame can carry (123 UTF-8 bytes)."""
    return text.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


def attachable(websocket: WebSocket, svc: Services, kind: Kind) -> tuple[Session, AgentLink] | str:
    """The session and the agent's link, or why this socket may not have them."""
    principal = websocket_principal(websocket)
    if principal is None:
        return "foreign origin or not logged in"
    session = svc.sessions.get(websocket.path_params["session_id"])
    if session is None or session.technician != principal.user.username:
        return "not your session"
    if session.kind != kind or session.state is not State.ACTIVE:
        return f"the session is a {session.state} {session.kind} session, not an active {kind}"
    if svc.sessions.has_relay(session.id):
        return f"this session's {kind} is already open in another window"
    live = svc.registry.get(session.agent_id)
    if live is None:
        return "the machine is offline"
    return session, live.link


async def refuse(websocket: WebSocket, reason: str) -> None:
    """Close with 1008 before accepting: the client sees HTTP 403."""
    log.warning("websocket %s refused: %s", websocket.url.path, reason)
    await websocket.close(POLICY, close_reason(reason))


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, close_reason(reason))
