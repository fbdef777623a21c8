"""``--idle woken``: the full agent as the doorbell (``doorbell.py``) starts it.

Besides what it always does, it saves each doorbell key the broker sends and each
Hello it sends (``doorbellkey.py``), says in its Hello whether the doorbell has a
key (``"need"`` asks the broker for one), and ends once nothing needs it for
``--linger`` seconds (``linger.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from allowhelp.agent.doorbellkey import read_key, save_hello, save_key
from allowhelp.agent.doorbellnodes import NODE_ENV, https_origin
from allowhelp.agent.linger import Linger
from allowhelp.agent.peers import Endpoint
from allowhelp.protocol.control import Hello

log = logging.getLogger(__name__)


class WokenFiles:
    """The doorbell's files, as the full agent keeps them (``AgentService.doorbell``)."""

    def __init__(self, folder: Path, agent_id: str) -> None:
        self.folder = folder
        self.agent_id = agent_id

    @property
    def has_key(self) -> bool:
        return read_key(self.folder) is not None

    def stamp(self, hello: Hello) -> Hello:
        """The Hello as sent, saying whether the doorbell has a key; saved for it."""
        hello = replace(hello, doorbell="have" if self.has_key else "need")
        try:
            save_hello(self.folder, hello.to_json())
        except OSError as exc:
            log.warning("cannot save the Hello for the doorbell: %s", exc)
        return hello

    def key_received(self, token: str) -> None:
        try:
            save_key(self.folder, self.agent_id, token)
        except (OSError, ValueError) as exc:
            log.warning("cannot save the doorbell key: %s", exc)
            return
        log.info("agent=%s doorbell key saved", self.agent_id)


def linger_task(
    seconds: float | None,
    stop: asyncio.Event,
    needed: Callable[[], bool],
    connected: Callable[[], bool],
) -> asyncio.Task[None] | None:
    """Woken by the doorbell: the task that sets ``stop`` once idle; None otherwise."""
    if seconds is None:
        return None
    watch = Linger(seconds, needed, connected)
    return asyncio.create_task(watch.run(stop))


def rung_from(endpoints: list[Endpoint]) -> Endpoint | None:
    """The way to the node the doorbell rang from (``ALLOWHELP_DOORBELL_NODE``, taken
    out of the environment), which the tunnel tries first; None when not woken, or
    when that node is none of this PC's ways (an HTTPS route it does not take)."""
    node = os.environ.pop(NODE_ENV, "")
    for endpoint in endpoints:
        if node and endpoint.route == "https" and https_origin(endpoint.url) == node:
            return endpoint
    return None
