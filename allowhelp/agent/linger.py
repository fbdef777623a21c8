"""``--idle woken``: the full agent the doorbell started ends once nobody needs it.

Needed means: a prompt waits, a session is granted, a fleet job runs, a help
request waits for its code, a local client is connected (a session helper does
not count: the doorbell parks it, ``doorbellpark.py``), the doorbell has no key
yet (``runner.service_needed``), or (just started) the tunnel has not come up
yet, for at most ``FIRST_CONNECT``. After ``seconds`` of none of these, ``stop``
is set and the agent exits 0; the doorbell (``doorbell.py``) starts it again when
it is needed. A package upgrade needs nothing more: the next start runs the new
version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

FIRST_CONNECT = 120.0  # seconds a woken agent waits for its first tunnel, needed or not


class Linger:
    def __init__(
        self,
        seconds: float,
        needed: Callable[[], bool],
        connected: Callable[[], bool],
        *,
        first_connect: float = FIRST_CONNECT,
    ) -> None:
        if seconds <= 0:
            raise ValueError("--linger must be positive")
        self.seconds = seconds
        self._needed = needed
        self._connected = connected
        self._first_connect = first_connect
        self.ended = False

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        started = idle_since = loop.time()
        ever_connected = False
        every = min(1.0, self.seconds / 4)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            now = loop.time()
            ever_connected = ever_connected or self._connected()
            waiting = not ever_connected and now - started < self._first_connect
            if waiting or self._needed():
                idle_since = now
            elif now - idle_since >= self.seconds:
                log.info(
                    "nothing needed the agent for %g s: it ends (the doorbell stays)", self.seconds
                )
                self.ended = True
                stop.set()
