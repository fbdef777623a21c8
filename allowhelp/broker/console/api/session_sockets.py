"""The session WebSockets: a consented shell or screen, relayed to the technician's page.

``WS /api/v1/sessions/{id}/terminal``: binary frames carry terminal bytes
both ways; text frames carry JSON control (``{"type": "resize", ...}``);
``?cols=&rows=`` give the first size.

``WS /api/v1/sessions/{id}/screen``: binary frames carry the RFB stream both
ways; the ``binary`` subprotocol is accepted when the page offers it (noVNC
does).

Both keep only what is HTTP here: who is asking (exact Origin, a live
session cookie), accepting, and the close code for how it ended. Who may
attach and how a relay runs and ends the session is ``sessions/attach.py``,
the same for every kind.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from allowhelp.broker.audit.recording import AsciicastRecorder
from allowhelp.broker.console.answers import (
    CloseCode,
    accept_or_gone,
    close_code_of,
    close_quietly,
    refuse,
)
from allowhelp.broker.console.api.base import services, websocket_principal
from allowhelp.broker.console.api.invites import attach_invitee
from allowhelp.broker.console.api.node_routes import attach_elsewhere
from allowhelp.broker.console.api.recorders import recording_limits, screen_recorder, stop_auditor
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import BrokerError, RelayError
from allowhelp.broker.model.session import Session
from allowhelp.broker.relay.outcome import Outcome, Relay
from allowhelp.broker.relay.screen import ScreenRelay
from allowhelp.broker.relay.terminal import TerminalRelay, terminal_size
from allowhelp.broker.sessions.attach import claim, run_relay
from allowhelp.protocol.kinds import Kind

RelayMaker = Callable[[WebSocket, Services, Session], Relay]


def _number(value: str | None, default: int) -> int:
    try:
        return int(value or default)
    except ValueError:
        return default


def _terminal_relay(websocket: WebSocket, svc: Services, session: Session) -> Relay:
    cols = _number(websocket.query_params.get("cols"), 80)
    rows = _number(websocket.query_params.get("rows"), 24)
    size = terminal_size(cols, rows)
    try:
        recorder = AsciicastRecorder(
            svc.settings.recordings_dir,
            session.id,
            *size,
            title=f"{session.hostname} — {session.technician}",
            limits=recording_limits(svc),
            on_stop=stop_auditor(svc, session, f"{session.id}.cast"),
        )
    except OSError as exc:  # no shell that cannot be recorded at all
        raise RelayError(f"the shell cannot be recorded: {exc.strerror or exc}") from exc
    return TerminalRelay(websocket, recorder, size, session.kind, session_id=session.id)


def _screen_relay(websocket: WebSocket, svc: Services, session: Session) -> Relay:
    recorder = screen_recorder(svc, session)  # open already if this page went before once
    return ScreenRelay(websocket, recorder, view_only=session.view_only, sender=session.technician)


async def _attach(websocket: WebSocket, kind: Kind, make: RelayMaker) -> None:
    svc = services(websocket)
    try:
        principal = await websocket_principal(websocket)
        if await attach_elsewhere(websocket, principal.actor):
            return  # run by another node: relayed there (#21)
        owned = svc.sessions.live(websocket.path_params["session_id"])
        if owned is not None and owned.technician != principal.user.username:
            await attach_invitee(websocket, svc, principal.user.username, kind)  # #18
            return
        session, link, relay = claim(
            svc.sessions,
            websocket.path_params["session_id"],
            principal.user.username,
            kind,
            lambda session: make(websocket, svc, session),
        )
    except BrokerError as exc:
        await refuse(websocket, exc)
        return
    if not await accept_or_gone(websocket):  # the page went meanwhile: it left
        relay.stop()
        await svc.sessions.finish(session.id, Outcome("technician"))
        return
    outcome = await run_relay(svc.sessions, session, link, relay)
    await close_quietly(websocket, *_closing(outcome))


def _closing(outcome: Outcome) -> tuple[CloseCode, str]:
    if outcome.failure is not None:
        return close_code_of(outcome.failure), outcome.failure.message
    return CloseCode.NORMAL, f"session ended: {outcome.reason}"


async def terminal(websocket: WebSocket) -> None:
    await _attach(websocket, "shell", _terminal_relay)


async def screen(websocket: WebSocket) -> None:
    await _attach(websocket, "screen", _screen_relay)


def routes() -> list[BaseRoute]:
    return [
        WebSocketRoute("/api/v1/sessions/{session_id}/terminal", terminal),
        WebSocketRoute("/api/v1/sessions/{session_id}/screen", screen),
    ]
