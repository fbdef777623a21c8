"""What every relay is to the session layer: how it opens, how it ended, what it counted.

A relay pumps one technician WebSocket to one channel on the agent. The
sessions layer runs any relay the same way (``sessions/attach.py``): audit the
start, open the channel the relay asks for, run it, stop it, end the session
from its ``Outcome``. A new kind of session is a new class that fits
``Relay``; nothing else is copied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from allowhelp.broker.errors import BrokerError, RelayError
from allowhelp.broker.model.session import Traffic
from allowhelp.broker.relay.inbox import ChannelInbox
from allowhelp.protocol.kinds import EndReason, Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a relay ended: the session's end reason, and what broke if anything did.

    ``failure`` set means the session fails (``session.failed`` then ended
    with reason ``error``); its class says how the technician's socket closes.
    """

    reason: EndReason
    failure: BrokerError | None = None


@dataclass(frozen=True)
class ChannelSpec:
    """The channel a relay needs on the agent."""

    kind: Kind
    window: int
    term: tuple[str, int, int] | None = None


@dataclass
class Counters:
    """Bytes each way, counted on the relay's hot path."""

    to_agent: int = 0
    from_agent: int = 0
    recording: str | None = None
    recording_sha256: str | None = None

    def traffic(self) -> Traffic:
        return Traffic(self.to_agent, self.from_agent, self.recording, self.recording_sha256)


class Relay(Protocol):
    """One technician socket ↔ one agent channel, until either side ends."""

    @property
    def channel(self) -> ChannelSpec: ...

    def started_details(self) -> dict[str, object]:
        """What ``session.started`` records about this relay."""
        ...

    def factory(self) -> ChannelInbox: ...

    async def run(self, chan: asyncssh.SSHClientChannel[bytes]) -> Outcome: ...

    def stop(self) -> Traffic:
        """Close the channel, seal what it recorded; safe to call more than once."""
        ...


Pump = Coroutine[object, object, None]


async def first_to_end(console: Pump, *others: Pump) -> tuple[bool, BaseException | None]:
    """Run a relay's pumps until one ends, then cancel the rest.

    Says whether the console's pump (the first: the technician's socket) was
    among those that ended, and the first exception a pump raised, if any.
    """
    up = asyncio.ensure_future(console)
    tasks = {up, *(asyncio.ensure_future(c) for c in others)}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    errors.sort(key=lambda exc: not isinstance(exc, BrokerError))  # what broke, before its echoes
    return up in done, errors[0] if errors else None


def outcome_of(
    what: str,
    console_left: bool,
    error: BaseException | None,
    channel_ended: Callable[[], Outcome],
) -> Outcome:
    """How a relay ended, from what ``first_to_end`` saw: what broke, else the
    technician leaving, else why the agent's channel closed."""
    if isinstance(error, RelayError):
        return Outcome("error", error)
    if console_left or error is not None:
        if error is not None:  # sending to a browser that left
            log.info("%s relay: the browser went away (%s)", what, type(error).__name__)
        return Outcome("technician")
    return channel_ended()
