"""Help requests: the user asks first and reads a short code to the help desk.

A code is six digits (easy to say on the phone), unique among live requests,
and expires. Starting a session from one still goes through the consent
prompt; the prompt then reminds the user that they asked.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AuditUnavailable, StoreError, TunnelError
from allowhelp.broker.model.session import user_actor
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.store import HelpTicket, Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import HelpCode, HelpRefused, HelpRequest, Message
from allowhelp.protocol.text import digits_of, format_code, plain_text

log = logging.getLogger(__name__)

CODE_TTL = 30 * 60
MAX_OPEN_PER_AGENT = 5
REFUSALS = {
    "too_many_open": (
        f"this PC already has {MAX_OPEN_PER_AGENT} open help requests; "
        "the help desk will call back, or try again when one is answered"
    ),
    "store_unavailable": "the help desk's database is unavailable: try again in a minute",
}


def normalise_code(code: str) -> str:
    return digits_of(code)


class HelpDesk:
    def __init__(
        self, db: StoreWorker, audit: AuditLog, events: EventHub, agents: AgentRegistry
    ) -> None:
        self._db = db
        self._audit = audit
        self._events = events
        self._agents = agents

    async def open_tickets(self) -> list[HelpTicket]:
        return await self._db.read(Store.help_requests, time.time())

    async def belongs(self, code: str, agent_id: str) -> bool:
        ticket = await self._db.read(Store.help_request, normalise_code(code))
        return ticket is not None and ticket.agent_id == agent_id and ticket.expires > time.time()

    async def used(self, code: str, session_id: str) -> None:
        await self._db.run(Store.use_help_request, normalise_code(code), session_id)

    async def request(self, agent_id: str, message: HelpRequest) -> None:
        """The user asked for help on their PC (``allowhelp-agent request-help``)."""
        now = time.time()
        live = self._agents.get(agent_id)
        if live is None or live.link is None:  # gone while the message waited: nobody to answer
            log.warning("agent=%s help request dropped: the agent is gone", agent_id)
            return
        link = live.link  # the tunnel it came on: the answer goes there or nowhere
        open_here = [t for t in await self.open_tickets() if t.agent_id == agent_id]
        agent = await self._db.read(Store.agent, agent_id)
        hostname = agent.hostname if agent else "?"
        if len(open_here) >= MAX_OPEN_PER_AGENT:
            await self._refuse(agent_id, message, link, hostname, "too_many_open")
            return
        digits = await self._fresh_digits(now)
        ticket = HelpTicket(
            code=digits,
            agent_id=agent_id,
            hostname=hostname,
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
        try:
            await self._db.run(Store.add_help_request, ticket)
        except StoreError:  # the chain must not say a code was given that never was
            with contextlib.suppress(AuditUnavailable):  # logged by the writer already
                await self._refuse(agent_id, message, link, hostname, "store_unavailable")
            raise
        # On the record and stored: the console hears of it even if the tunnel went
        # meanwhile and the PC cannot be told its code (``_answer`` raises then).
        self._events.publish({"type": "help_request", "help_request": ticket.to_json()})
        self._answer(agent_id, link, HelpCode(message.ref, format_code(digits), CODE_TTL))

    async def _refuse(
        self, agent_id: str, message: HelpRequest, link: AgentLink, hostname: str, why: str
    ) -> None:
        """Audited and told: the user must not sit waiting for a code that never comes."""
        await self._audit.write(
            "help.refused",
            actor=user_actor(agent_id),
            target=agent_id,
            details={
                "reason": why,
                "hostname": hostname,
                "message": plain_text(message.message, 500),
            },
        )
        log.warning("agent=%s help request refused: %s", agent_id, why)
        self._answer(agent_id, link, HelpRefused(ref=message.ref, reason=REFUSALS[why]))

    def _answer(self, agent_id: str, asked_on: AgentLink, answer: Message) -> None:
        """Over the tunnel the request came on, if it is still the agent's after the
        awaits: a newer tunnel never asked (``AgentRegistry.still``)."""
        link = self._agents.still(agent_id, asked_on)
        if link is None:
            raise TunnelError("the tunnel the help request came on is gone")
        link.send(answer)

    async def _fresh_digits(self, now: float) -> str:
        for _ in range(100):
            digits = f"{secrets.randbelow(10**6):06d}"
            existing = await self._db.read(Store.help_request, digits)
            if existing is None or existing.expires < now:
                return digits
        raise RuntimeError("no free help code: too many open help requests")
