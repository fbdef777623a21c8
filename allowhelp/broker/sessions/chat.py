"""Chat in every active session, between the technician and the person at the PC.

A line from the technician is stored, then sent to the agent (only an agent
that said ``chat: true`` in its ``Hello``: an older one would take an unknown
message type as a protocol break). A line from the PC arrives as
``chat.message`` on the control channel, for that agent's own active session
only. Both are made plain (``plain_text``: no control characters, bounded),
kept in the store with the session, published to the console, and the
transcript's SHA-256 goes into ``session.ended`` (``transcript_sha256``).

The digest is over the transcript as ``GET /messages`` returns it: one JSON
object per line, ``{"from", "text", "ts"}``, keys sorted, UTF-8, each line
ending in ``\\n``. A reader with the report's transcript can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from allowhelp.broker.errors import (
    AgentUnreachable,
    BadRequest,
    Conflict,
    NotFound,
    TooLarge,
    TunnelError,
)
from allowhelp.broker.model.session import Session, State, user_actor
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.store import Store
from allowhelp.broker.store.session_extras import ChatLine
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.protocol.control import MAX_CHAT, ChatMessage
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

MAX_LINES = 5_000  # per session: a flood ends in a clear refusal, not a full disk


def transcript_sha256(lines: list[ChatLine]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(json.dumps(line.to_json(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def clean_chat(text: object) -> str:
    if not isinstance(text, str):
        raise BadRequest("text must be a string", code="bad_text")
    if len(text) > MAX_CHAT:
        raise TooLarge(f"a chat message is at most {MAX_CHAT} characters")
    kept = plain_text(text, MAX_CHAT)
    if not kept:
        raise BadRequest("the message is empty", code="bad_text")
    return kept


class ChatDesk:
    def __init__(
        self,
        sessions: SessionRegistry,
        agents: AgentRegistry,
        db: StoreWorker,
        events: EventHub,
    ) -> None:
        self._sessions = sessions
        self._agents = agents
        self._db = db
        self._events = events
        sessions.add_end_details(self._end_details)

    async def _end_details(self, session_id: str) -> dict[str, object]:
        lines = await self._db.read(Store.chat_lines, session_id, MAX_LINES)
        return {"chat_messages": len(lines), "transcript_sha256": transcript_sha256(lines)}

    async def transcript(self, session: Session) -> list[ChatLine]:
        return await self._db.read(Store.chat_lines, session.id, MAX_LINES)

    async def from_technician(
        self, session: Session, technician_name: str, text: object
    ) -> ChatLine:
        clean = clean_chat(text)
        live = self._sessions.live(session.id)
        if live is None or live.state is not State.ACTIVE:
            raise Conflict("chat is open only while the session is active", code="not_active")
        agent = self._agents.get(session.agent_id)
        if agent is None:
            raise AgentUnreachable("the machine is offline")
        if not agent.chat:
            raise Conflict("this PC's agent is too old for chat", code="chat_unsupported")
        line = await self._keep(session, f"technician:{session.technician}", clean)
        link = self._sessions.session_link(session.id)  # after the await: its own tunnel
        try:
            if link is None:
                raise TunnelError("the session's tunnel is gone")
            link.send(ChatMessage(session.id, clean, technician_name[:100]))
        except TunnelError as exc:
            raise AgentUnreachable(f"the message is kept but did not reach the PC: {exc}") from exc
        return line

    async def from_agent(self, agent_id: str, message: ChatMessage) -> None:
        """The person at the PC wrote (``allowhelp-agent chat``, the session window)."""
        session = self._sessions.live(message.session_id)
        if session is None or session.agent_id != agent_id or session.state is not State.ACTIVE:
            log.warning("agent=%s chatted in a session that is not its own active one", agent_id)
            return
        text = plain_text(message.text, MAX_CHAT)
        if text:
            await self._keep(session, user_actor(agent_id), text)

    async def _keep(self, session: Session, sender: str, text: str) -> ChatLine:
        if await self._db.read(Store.chat_count, session.id) >= MAX_LINES:
            raise Conflict(f"this session's chat is full ({MAX_LINES} messages)", code="chat_full")
        line = ChatLine(sender, text, time.time())
        await self._db.run(Store.add_chat_line, session.id, line)
        self._events.publish(
            {"type": "chat", "session_id": session.id, "message": line.to_json()},
            audience=f"user:{session.technician}",
        )
        return line


def visible_session(session: Session | None, username: str, is_admin: bool) -> Session:
    if session is None or (not is_admin and session.technician != username):
        raise NotFound("no such session")
    return session
