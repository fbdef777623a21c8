"""The machine service's answers to a local user's requests: each for the caller's uid alone.

``pending``, ``status``, ``messages``, ``chat``, ``allow``, ``deny`` and ``end``
from the CLI or a session helper: another local user sees no foreign request and
cannot allow, deny or end one (the service refuses it exactly as a request that
does not exist). What a helper is sent to prompt its user is built here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allowhelp.agent.consent import Pending
from allowhelp.agent.errors import AgentError
from allowhelp.agent.service import AgentService
from allowhelp.protocol import helper as hp

Query = hp.PendingQuery | hp.StatusQuery | hp.MessagesQuery | hp.Say
Decision = hp.Allow | hp.Deny | hp.End


def answer_query(service: AgentService, packet: Query, uid: int, signed_in: str) -> bytes:
    """``pending``, ``status``, ``messages`` and ``chat``; ``signed_in``: the name
    ``status`` says."""
    if isinstance(packet, hp.PendingQuery):
        return hp.answer(True, pending=[p.to_json() for p in service.gate.pending(uid)])
    if isinstance(packet, hp.StatusQuery):
        return hp.answer(True, **status(service, uid, signed_in))
    return chat(service, packet, uid)


def answer_decision(service: AgentService, packet: Decision, uid: int) -> bytes:
    """``allow``, ``deny`` and ``end`` of the caller's own requests and sessions."""
    if isinstance(packet, hp.End):
        return hp.answer(True, ended=service.end(packet.session_id or None, owner=uid))
    allow = isinstance(packet, hp.Allow)
    view_only = packet.view_only if isinstance(packet, hp.Allow) else False
    decision = service.decide(
        packet.session_id, allow=allow, view_only=view_only, via=packet.via, owner=uid
    )
    return hp.answer(True, session_id=decision.session_id, view_only=decision.view_only)


def status(service: AgentService, uid: int, signed_in: str) -> dict[str, Any]:
    return {
        "connected": service.connected,
        "agent_id": service.config.agent_id,
        "signed_in": signed_in,
        "pending": [p.to_json() for p in service.gate.pending(uid)],
        "sessions": [g.to_json() for g in service.gate.grants(uid)],
    }


def chat(service: AgentService, packet: hp.MessagesQuery | hp.Say, uid: int) -> bytes:
    """``messages`` and ``chat`` for the caller's own sessions alone."""
    if isinstance(packet, hp.Say):
        said = service.say(packet.session_id, packet.text, owner=uid)
        return hp.answer(True, message=said.to_json())
    lines = [line.to_json() for line in service.messages(packet.session_id, owner=uid)]
    return hp.answer(True, messages=hp.fitting(lines))


async def ask_help(
    running: Callable[[], AgentService], packet: hp.AskHelp, *, has_helper: bool, uid: int
) -> bytes:
    """``request-help``: only a user signed in at this PC (``has_helper``) may ask;
    ``running`` gives the service, or raises while it is starting."""
    if not has_helper:
        return hp.answer(
            False,
            error="only a user signed in at this PC (with `allowhelp-agent session` "
            "running) can ask for help",
        )
    try:
        code = await running().request_help(packet.message, uid)
    except AgentError as exc:
        return hp.answer(False, error=str(exc))
    return hp.answer(True, code=code.code, expires_in=code.expires_in)


def prompt_packet(pending: Pending) -> hp.Prompt:
    """What the owner's helpers are sent to ask their user."""
    view = pending.to_json()
    request = pending.request
    return hp.Prompt(
        session_id=request.session_id,
        technician=request.technician,
        organisation=request.organisation,
        kind=request.kind,
        reason=request.reason,
        phrase=request.phrase,
        help_code=request.help_code,
        seconds_left=int(str(view["seconds_left"])),
        prompt=pending.prompt_text(),
        joins=request.joins,
        mode=request.mode,
        username=request.username,
        view_only=request.view_only,
    )
