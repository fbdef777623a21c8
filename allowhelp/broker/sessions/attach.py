"""The one path from a consented session to a running relay, and from its end to the audit.

Every kind of session (shell, screen, and whatever comes next) attaches the
same way:

1. ``claim``: only the technician the PC user consented to (an admin
   included: the consent named someone else), only an active session of the
   right kind, only while the machine is online, and only once at a time (a
   second tab is refused rather than ending the first one's session). The
   relay is registered before the caller awaits anything, so two sockets
   racing for one session cannot both win.
2. ``run_relay``: audit ``session.started`` (fail closed), open the channel
   the relay asks for, pump until either side ends, then end the session from
   the relay's ``Outcome`` with one actor rule (``Session.actor_for``), unless
   something else (the user, the technician's end button, a lost tunnel)
   ended it first.

The WebSocket handlers in ``console/`` keep only what is HTTP: who is
asking, accepting, and the close code for the outcome returned here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from allowhelp.broker.errors import AgentUnreachable, BrokerError, Conflict, Forbidden
from allowhelp.broker.model.session import Session, State
from allowhelp.broker.relay.outcome import Outcome, Relay
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.kinds import TERMINAL_KINDS, Kind

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 20.0


def claim(
    sessions: SessionRegistry,
    session_id: str,
    username: str,
    kind: Kind,
    make: Callable[[Session], Relay],
) -> tuple[Session, AgentLink, Relay]:
    """The session, the agent's link and a relay ``make`` built for them, registered;
    or raise why this caller may not have them (nothing is built then).

    Synchronous on purpose: checking and registering happen with no await in
    between (and no database: only sessions in memory can be active).
    """
    session = sessions.live(session_id)  # only a live session can be attached
    if session is None or session.technician != username:
        raise Forbidden("not your session, or it is over")
    # One terminal page for both shells: a shell and an admin shell attach alike.
    same = session.kind == kind or (kind in TERMINAL_KINDS and session.kind in TERMINAL_KINDS)
    if not same or session.state is not State.ACTIVE:
        raise Conflict(
            f"the session is a {session.state} {session.kind} session, not an active {kind}"
        )
    if sessions.ending(session.id):
        raise Conflict("the session is ending")
    if sessions.has_relay(session.id):
        raise Conflict(f"this session's {kind} is already open in another window")
    link = sessions.session_link(session.id)
    if link is None:
        raise AgentUnreachable("the machine is offline")
    relay = make(session)
    sessions.attach_relay(session.id, relay.stop)
    return session, link, relay


async def run_relay(
    sessions: SessionRegistry, session: Session, link: AgentLink, relay: Relay
) -> Outcome:
    """Run ``relay`` for ``session`` to its end and end the session; say how it ended."""
    spec = relay.channel
    outcome = Outcome("error", BrokerError(f"the {spec.kind} relay stopped unexpectedly"))
    try:
        await sessions.audit_started(session, relay.started_details())
        chan, _ = await asyncio.wait_for(
            link.open_channel(
                relay.factory, spec.kind, session.id, term=spec.term, window=spec.window
            ),
            OPEN_TIMEOUT,
        )
        if not sessions.relay_attached(session.id, relay.stop):  # ended while it opened
            chan.close()
            raise Conflict("the session ended while its channel opened")
        sessions.owner_started(session.id)  # invitees may join from now (it records)
        outcome = await relay.run(chan)
    except BrokerError as exc:
        outcome = Outcome("error", exc)
    except TimeoutError:
        late = AgentUnreachable(f"the PC did not open the {spec.kind} within {OPEN_TIMEOUT:.0f} s")
        outcome = Outcome("error", late)
    finally:
        sessions.owner_stopped(session.id)  # before it stops recording: nobody joins now
        relay.stop()
        outcome = await sessions.finish(session.id, outcome)
    return outcome
