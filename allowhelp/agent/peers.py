"""The other broker nodes this agent may fail over to (docs/multinode.md).

Learned only from ``nodes.list`` on the control channel, that is from a broker
that has just proved the pinned key over the tunnel, and from the enrolment answer
of the broker whose CA the token pinned (for first contact); kept in ``nodes.json``
next to ``agent.json`` (0600, written atomically), checked again on load (a
damaged or edited file counts as no nodes: deny by default). The enrolled
broker's address is never replaced: it stays in ``agent.json`` and is always
tried. An address grants nothing: every node is checked exactly as the
enrolled broker is (the same pinned tunnel key; the same CA for the HTTPS port).

Every agent is told the nodes in the same order, so each one puts them in an order
of its own (``spread``: rendezvous hashing of its agent id with each address): when
a node dies, its agents spread evenly over the live ones instead of all landing on
the first one listed, and each agent keeps the same order from one failure to the
next.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from allowhelp.agent.config import AgentConfig, write_private
from allowhelp.protocol.control import NodesList
from allowhelp.protocol.nodes import AddressError, checked_nodes, tunnel_address

log = logging.getLogger(__name__)

NODES_FILE = "nodes.json"


@dataclass(frozen=True)
class Endpoint:
    """One way to one broker node: the raw SSH port (``host``, ``port``) or the
    HTTPS port (``url``)."""

    route: str  # "ssh" | "https"
    host: str = ""
    port: int = 0
    url: str = ""

    def __str__(self) -> str:
        if self.route == "https":
            return self.url
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class KnownNodes:
    """The learned addresses, in the order the broker gave them."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / NODES_FILE
        self.tunnels: tuple[str, ...] = ()
        self.urls: tuple[str, ...] = ()
        self._load()

    def _load(self) -> None:
        try:
            self.tunnels, self.urls = checked_nodes(json.loads(self._path.read_text()))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # AddressError, JSON errors included
            self.tunnels, self.urls = (), ()
            log.warning("ignored %s (%s): no other broker nodes known", self._path, exc)

    def learned(self, message: NodesList) -> bool:
        """Keep what the connected broker said (already checked by ``decode``);
        True when it changed. A failed write keeps the old list on disk."""
        if (message.tunnels, message.urls) == (self.tunnels, self.urls):
            return False
        text = json.dumps({"tunnels": list(message.tunnels), "urls": list(message.urls)})
        try:
            write_private(self._path, text + "\n")
        except OSError as exc:
            log.warning("could not keep the broker nodes in %s: %s", self._path, exc)
        self.tunnels, self.urls = message.tunnels, message.urls
        log.info(
            "broker nodes: %d tunnel address(es), %d URL(s)", len(self.tunnels), len(self.urls)
        )
        return True

    def enrolled_with(self, answer: object) -> None:
        """The nodes the enrolment answer lists (``nodes``, docs/multinode.md): so a PC
        whose broker node is down before it ever connected still finds another. From
        the broker the token pinned (the answer came over the pinned CA), checked as
        ``nodes.list`` is; a damaged list is ignored (no other node, said in the log),
        none at all clears what an earlier enrolment in this folder left."""
        try:
            listed = NodesList() if answer is None else NodesList(*checked_nodes(answer))
        except AddressError as exc:
            log.warning("ignored the broker nodes in the enrolment answer (%s)", exc)
            listed = NodesList()
        self.learned(listed)

    def endpoints(self, config: AgentConfig) -> list[Endpoint]:
        """Every way to a broker this PC may take: the enrolled broker's first (the raw
        port, then the HTTPS port), then the learned nodes' by the same routes only:
        a PC enrolled through the HTTPS port alone fails over to HTTPS ports alone."""
        enrolled = list(_enrolled(config))
        found = list(enrolled)
        if config.tunnel_port:
            for text in spread(self.tunnels, config.agent_id):
                host, port = tunnel_address(text)
                found.append(Endpoint("ssh", host=host, port=port))
        if config.tunnel_url:
            found.extend(Endpoint("https", url=url) for url in spread(self.urls, config.agent_id))
        unique: list[Endpoint] = []
        for endpoint in found:
            if endpoint not in unique:
                unique.append(endpoint)
        return unique


def ahead_of(
    current: Endpoint | None, endpoints: list[Endpoint], config: AgentConfig
) -> list[Endpoint]:
    """The ways this agent puts before ``current`` when ``current`` is another node's
    (one it failed over to): where it moves back to once one of them is live again.
    None when it is on its enrolled broker, by either route (a PC whose raw port is
    blocked stays on the HTTPS port it reached)."""
    if current is None or current not in endpoints or current in _enrolled(config):
        return []
    return endpoints[: endpoints.index(current)]


def spread(addresses: tuple[str, ...], agent_id: str) -> tuple[str, ...]:
    """The addresses in this agent's own order: highest rendezvous weight first, the
    weight being SHA-256 of the agent id and the address. Stable for one agent and one
    set of nodes; a node leaving the set moves only the agents that had it first, and
    those spread evenly over the others (a rotation of one list would send them all to
    the next node in it)."""

    def weight(address: str) -> bytes:
        return hashlib.sha256(f"{agent_id}\n{address}".encode()).digest()

    return tuple(sorted(addresses, key=weight, reverse=True))


def _enrolled(config: AgentConfig) -> Iterator[Endpoint]:
    for route in config.routes:
        if route == "ssh":
            yield Endpoint("ssh", host=config.tunnel_host, port=config.tunnel_port)
        else:
            yield Endpoint("https", url=config.tunnel_url)
