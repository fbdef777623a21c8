"""Help requests: the user asks first and reads a short code to the help desk.

A code is six digits (easy to say on the phone), unique among live requests,
and expires. Starting a session from one still goes through the consent
prompt; the prompt then reminds the user that they asked.
"""

from __future__ import annotations

import logging
import secrets
import time

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.model.session import user_actor
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.store import HelpTicket, Store
from allowhelp.broker.tunnel.agents import AgentRegistry, LiveAgent
from allowhelp.protocol.control import HelpCode, HelpRefused, HelpRequest
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

CODE_TTL = 30 * 60
MAX_OPEN_PER_AGENT = 5


def format_code(digits: str) -> str:
    return f"{digits[:3]} {digits[3:]}"


def normalise_code(code: str) -> str:
    return "".join(ch for ch in code if ch.isdigit())


class HelpDesk:
    def __init__(
        self, store: Store, audit: AuditLog, events: EventHub, agents: AgentRegistry
    ) -> None:
        self._store = store
        self._audit = audit
        self._events = events
        self._agents = agents

    def open_tickets(self) -> list[HelpTicket]:
        return self._store.help_requests(time.time())

    def belongs(self, code: str, agent_id: str) -> bool:
        ticket = self._store.help_request(normalise_code(code))
        return ticket is not None and ticket.agent_id == agent_id and ticket.expires > time.time()

    def used(self, code: str, session_id: str) -> None:
        self._store.use_help_request(normalise_code(code), session_id)

    async def request(self, agent_id: str, message: HelpRequest) -> None:
        """The user asked for help on their PC (``allowhelp-agent request-help``)."""
        now = time.time()
        live = self._agents.get(agent_id)
        if live is None:  # the tunnel went while the message waited: nobody to answer
            log.warning("agent=%s help request dropped: the agent is gone", agent_id)
            return
        open_here = [t for t in self.open_tickets() if t.agent_id == agent_id]
        agent = self._store.agent(agent_id)
        if len(open_here) >= MAX_OPEN_PER_AGENT:
            await self._refuse(agent_id, message, live, agent.hostname if agent else "?")
            return
        digits = self._fresh_digits(now)
        ticket = HelpTicket(
            code=digits,
            agent_id=agent_id,
            hostname=agent.hostname if agent else "?",
            message=plain_text(message.message, 500),
            created=now,
            expires=now + CODE_TTL,
        )
        await self._audit.write(
            "help.requested",
            actor=user_actor(agent_id),
            target=agent_id,
            details={
                "code": format_code(digits),
                "hostname": ticket.hostname,
                "message": ticket.message,
            },
        )
        self._store.add_help_request(ticket)
        live.link.send(HelpCode(ref=message.ref, code=format_code(digits), expires_in=CODE_TTL))
        self._events.publish({"type": "help_request", "help_request": ticket.to_json()})

    async def _refuse(
        self, agent_id: str, message: HelpRequest, live: LiveAgent, hostname: str
    ) -> None:
        """Audited and told: the user must not sit waiting for a code that never comes."""
        reason = (
            f"this PC already has {MAX_OPEN_PER_AGENT} open help requests; "
            "the help desk will call back, or try again when one is answered"
        )
        await self._audit.write(
            "help.refused",
            actor=user_actor(agent_id),
            target=agent_id,
            details={
                "reason": "too_many_open",
                "hostname": hostname,
                "message": plain_text(message.message, 500),
            },
        )
        log.warning("agent=%s help request refused: too many open", agent_id)
        live.link.send(HelpRefused(ref=message.ref, reason=reason))

    def _fresh_digits(self, now: float) -> str:
        for _ in range(100):
            digits = f"{secrets.randbelow(10**6):06d}"
            existing = self._store.help_request(digits)
            if existing is None or existing.expires < now:
                return digits
        raise RuntimeError("no free help code: too many open help requests")
