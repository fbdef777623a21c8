"""WS /api/v1/sessions/{id}/terminal: the consented shell, relayed to xterm.js.

Binary frames carry terminal bytes both ways; text frames carry JSON control
(``{"type": "resize", "cols": C, "rows": R}``). Who may attach is decided in
``attach``. How the relay ends becomes the session's end reason, and the
session's end record carries the bytes each way and the recording's digest.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from allowhelp.protocol.control import EndReason

from ..agentlink import AgentLink
from ..errors import AuditUnavailable, TunnelError
from ..recording import AsciicastRecorder
from ..relay import SHELL_WINDOW, TerminalRelay
from ..services import Services
from ..session import Session
from .attach import INTERNAL, NORMAL, OPEN_TIMEOUT, attachable, close_quietly, refuse

log = logging.getLogger(__name__)


def _size(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value or default), low), high)
    except ValueError:
        return default


async def terminal(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    checked = attachable(websocket, svc, "shell")
    if isinstance(checked, str):
        await refuse(websocket, checked)
        return
    session, link = checked
    cols = _size(websocket.query_params.get("cols"), 80, 2, 1000)
    rows = _size(websocket.query_params.get("rows"), 24, 1, 500)
    recorder = AsciicastRecorder(
        svc.settings.data_dir / "recordings",
        session.id,
        cols,
        rows,
        title=f"{session.hostname} — {session.technician}",
    )
    relay = TerminalRelay(websocket, recorder)
    svc.sessions.attach_relay(session.id, relay.stop)  # before any await: one socket only
    await websocket.accept()
    await _relay_shell(websocket, svc, session, link, relay, size=(cols, rows))


async def _relay_shell(
    websocket: WebSocket,
    svc: Services,
    session: Session,
    link: AgentLink,
    relay: TerminalRelay,
    *,
    size: tuple[int, int],
) -> None:
    reason: EndReason = "error"
    failure: str | None = None
    try:
        await svc.sessions.audit_started(session, {"cols": size[0], "rows": size[1]})
        chan, _ = await asyncio.wait_for(
            link.open_channel(
                relay.factory,
                "shell",
                session.id,
                term=("xterm-256color", *size),
                window=SHELL_WINDOW,
            ),
            OPEN_TIMEOUT,
        )
        reason = await relay.run(chan)
        failure = relay.failure
    except (TunnelError, AuditUnavailable) as exc:
        failure = str(exc)
    except TimeoutError:
        failure = f"the PC did not open the shell within {OPEN_TIMEOUT:.0f} s"
    finally:
        relay.stop()
        if failure is not None:
            log.error("session=%s shell could not start: %s", session.id, failure)
            await svc.sessions.fail(session.id, failure)
        else:
            await svc.sessions.end_quietly(
                session.id, reason=reason, actor=f"technician:{session.technician}"
            )
        await close_quietly(
            websocket,
            INTERNAL if failure else NORMAL,
            failure or f"session ended: {reason}",
        )


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/api/v1/sessions/{session_id}/terminal", terminal)]
