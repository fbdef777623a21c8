"""The broker nodes the doorbell may ring from (standard library only, like the doorbell).

The tunnel fails over through the nodes the broker listed (``nodes.list``, kept in
``nodes.json`` by ``peers.KnownNodes``); the doorbell walks the same nodes: the
enrolled broker's URL (``agent.json``), then each listed node's HTTPS port (the
host and port of its ``wss://`` tunnel URL, where the doorbell's endpoint is too),
in this agent's own rendezvous order (``peers.spread``, the same hash). Every node
is checked as the enrolled one (the pinned CA): an address grants nothing. The
node a stream stood on goes to the woken full agent (``NODE_ENV``) so that its
tunnel tries that node first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from urllib.parse import urlsplit

from allowhelp.protocol.nodes import checked_nodes

log = logging.getLogger(__name__)

NODES_FILE = "nodes.json"  # peers.NODES_FILE (peers.py loads the control protocol)
NODE_ENV = "ALLOWHELP_DOORBELL_NODE"  # internal: the node the doorbell rang from
# On another node, the ones ahead are tried every RETURN_EVERY times --reconnect-cap,
# jittered by half (tunnel.py's RETURN_EVERY: a test keeps the two equal).
RETURN_EVERY = 10


def spread(addresses: tuple[str, ...], agent_id: str) -> tuple[str, ...]:
    """``peers.spread`` (a test keeps the two equal)."""

    def weight(address: str) -> bytes:
        return hashlib.sha256(f"{agent_id}\n{address}".encode()).digest()

    return tuple(sorted(addresses, key=weight, reverse=True))


def https_origin(url: str) -> str:
    """``https://host:port`` of a ``wss://`` or ``https://`` URL."""
    return f"https://{urlsplit(url).netloc}"


def known_urls(folder: Path, agent_id: str) -> tuple[str, ...]:
    """The listed nodes' tunnel URLs in this agent's order; none when there is no
    ``nodes.json`` or it is damaged (deny by default, as ``peers.KnownNodes``)."""
    path = folder / NODES_FILE
    try:
        _tunnels, urls = checked_nodes(json.loads(path.read_text()))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("ignored %s (%s): no other broker nodes known", path, exc)
        return ()
    return spread(urls, agent_id)


class NodeWalk:
    """Which node to ring from: the one that worked last first, then the enrolled
    broker, then the others; back to one ahead of it when that is live again."""

    def __init__(
        self, folder: Path, enrolled: str, agent_id: str, reconnect_cap: float = 30.0
    ) -> None:
        self.folder = folder
        self.enrolled = https_origin(enrolled)
        self.agent_id = agent_id
        self.calm = reconnect_cap * RETURN_EVERY
        self.preferred = ""  # the node whose stream stands, or stood last
        self.return_at = 0.0

    def nodes(self) -> list[str]:
        found = [self.enrolled]
        for url in known_urls(self.folder, self.agent_id):
            origin = https_origin(url)
            if origin not in found:
                found.append(origin)
        return found

    def order(self) -> list[str]:
        """Every node to try now, the preferred one first."""
        found = self.nodes()
        return sorted(found, key=lambda node: node != self.preferred)

    def ahead(self) -> list[str]:
        """The nodes this agent puts before the one it stands on (none on the enrolled one)."""
        found = self.nodes()
        if self.preferred not in found:
            return []
        return found[: found.index(self.preferred)]

    def stood(self, node: str, now: float) -> None:
        self.preferred = node
        self.return_at = now + random.uniform(self.calm / 2, self.calm * 3 / 2)

    def return_due(self, now: float) -> list[str]:
        """The nodes ahead to try now (then not again for a while); [] if none is due."""
        if now < self.return_at:
            return []
        self.return_at = now + random.uniform(self.calm / 2, self.calm * 3 / 2)
        return self.ahead()
