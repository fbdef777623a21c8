"""The CLI's requests to the machine service (``pending``, ``allow``, ... as a user).

The same requests as the per-user agent's control socket (``localsocket.call``),
put as helper-socket packets; the answer is for the caller's uid alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _
from allowhelp.agent.machinesocket import check_socket_folder
from allowhelp.agent.seqpacket import request
from allowhelp.protocol import helper as hp
from allowhelp.protocol.hostile_json import ProtocolError


def packet_for(op: dict[str, Any]) -> hp.Packet:
    name = op.get("op")
    session_id = op.get("session_id") or ""
    if name in ("pending", "status"):
        return hp.PendingQuery() if name == "pending" else hp.StatusQuery()
    if name == "allow":
        return hp.Allow(session_id, bool(op.get("view_only")))
    if name == "deny":
        return hp.Deny(session_id)
    if name == "end":
        return hp.End(session_id)
    if name in ("messages", "chat"):
        text = str(op.get("text") or "")
        return hp.MessagesQuery(session_id) if name == "messages" else hp.Say(session_id, text)
    if name == "request-help":
        return hp.AskHelp(str(op.get("message") or "")[:500])
    raise AgentError(_("unknown request %(name)r") % {"name": name})


def machine_call(path: Path, op: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    check_socket_folder(path.parent)
    reply = request(str(path), packet_for(op).encode(), expect_uid=0, timeout=timeout)
    try:
        answer = hp.read_answer(reply)
    except ProtocolError as exc:
        raise AgentError(
            _("the machine service gave no usable answer: %(error)s") % {"error": exc}
        ) from exc
    if not answer.get("ok"):
        raise AgentError(str(answer.get("error", "refused")))
    return answer
