"""WS /api/v1/sessions/{id}/screen: the PC's screen as an RFB stream for noVNC.

Binary frames both ways; the ``binary`` subprotocol is accepted when the page
offers it (noVNC does). The same wall as the terminal: exact Origin, a live
session cookie, the very technician the PC user consented to, an active
screen session, the machine online. One screen socket per session at a time:
a second tab is refused instead of ending the first one's session.

How it ends becomes the session's end: the technician closing the page
(``technician``), the user ending it on the PC (``user``), the tunnel
dropping (``agent_lost``), or a failure (``error``, audited as
``session.failed`` with the reason, which the page also gets as the close
reason).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from ..agentlink import AgentLink
from ..errors import AuditUnavailable, TunnelError
from ..screen_relay import INTERNAL, NORMAL, SCREEN_WINDOW, Outcome, ScreenRelay
from ..services import Services
from ..session import Session
from .attach import OPEN_TIMEOUT, attachable, close_quietly, refuse

log = logging.getLogger(__name__)

SUBPROTOCOL = "binary"


async def screen(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    checked = attachable(websocket, svc, "screen")
    if isinstance(checked, str):
        await refuse(websocket, checked)
        return
    session, link = checked
    relay = ScreenRelay(websocket, view_only=session.view_only)
    svc.sessions.attach_relay(session.id, relay.stop)  # before any await: one socket only
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    await _relay_screen(websocket, svc, session, link, relay)


async def _relay_screen(
    websocket: WebSocket, svc: Services, session: Session, link: AgentLink, relay: ScreenRelay
) -> None:
    outcome = Outcome("error", "the screen relay stopped unexpectedly", INTERNAL)
    try:
        await svc.sessions.audit_started(session, {"view_only": session.view_only})
        chan, _ = await asyncio.wait_for(
            link.open_channel(relay.factory, "screen", session.id, window=SCREEN_WINDOW),
            OPEN_TIMEOUT,
        )
        outcome = await relay.run(chan)
    except (TunnelError, AuditUnavailable) as exc:
        outcome = Outcome("error", str(exc), INTERNAL)
    except TimeoutError:
        message = f"the PC did not open its screen within {OPEN_TIMEOUT:.0f} s"
        outcome = Outcome("error", message, INTERNAL)
    finally:
        relay.stop()
        code, reason = await _finish(svc, session, outcome, relay)
        await close_quietly(websocket, code, reason)


async def _finish(
    svc: Services, session: Session, outcome: Outcome, relay: ScreenRelay
) -> tuple[int, str]:
    """End the session as the relay saw it, unless something else ended it first;
    the close code and reason for the page."""
    if relay.dropped_input:
        log.info("session=%s view-only: dropped %d input events", session.id, relay.dropped_input)
    current = svc.sessions.get(session.id)
    if current is not None and current.final:
        return NORMAL, f"session ended: {current.end_reason}"
    if outcome.failure is not None:
        log.error("session=%s screen failed: %s", session.id, outcome.failure)
        await svc.sessions.fail(session.id, outcome.failure)
        return outcome.close_code, outcome.failure
    actor = {
        "technician": f"technician:{session.technician}",
        "user": f"user@{session.hostname}",
    }.get(outcome.reason, "system")
    await svc.sessions.end_quietly(session.id, reason=outcome.reason, actor=actor)
    return NORMAL, f"session ended: {outcome.reason}"


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/api/v1/sessions/{session_id}/screen", screen)]
