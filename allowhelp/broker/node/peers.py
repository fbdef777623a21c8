"""Telling agents where every live broker node takes them, so they fail over (#21).

On a shared database each node's row in ``broker_nodes`` holds its public URL
and its public tunnel address (``node/cluster.py``). Agents whose Hello says
``nodes`` get a ``nodes.list`` of every live node's raw SSH port and HTTPS
tunnel URL: after their hello, and again whenever the set changes (read each
heartbeat). Older agents get nothing (they would close the tunnel on a type they
do not know). Alone on SQLite a broker has no other node and sends no list.
"""

from __future__ import annotations

import logging

from allowhelp.broker.errors import TunnelError
from allowhelp.broker.store.nodes import NODE_STALE, NodeRecord
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.protocol.control import NodesList
from allowhelp.protocol.nodes import MAX_NODES, AddressError, tunnel_address, tunnel_url
from allowhelp.wsbridge import PATH as TUNNEL_PATH

log = logging.getLogger(__name__)


def tunnel_url_of(public_url: str) -> str:
    """The HTTPS port's tunnel for a console URL (as ``server._Routes`` makes it)."""
    return "wss://" + public_url.removeprefix("https://").rstrip("/") + TUNNEL_PATH


def nodes_list(nodes: list[NodeRecord]) -> NodesList:
    """The live nodes' addresses, in node id order; what no agent could use is left out."""
    tunnels: list[str] = []
    urls: list[str] = []
    for node in nodes:
        if node.age >= NODE_STALE:
            continue
        try:
            tunnel_address(node.tunnel)
        except AddressError:  # "off": agents reach this node on its HTTPS port only
            pass
        else:
            if node.tunnel not in tunnels:
                tunnels.append(node.tunnel)
        try:
            url = tunnel_url(tunnel_url_of(node.https))
        except AddressError as exc:
            log.warning("node %s has no usable public URL for agents: %s", node.id, exc)
        else:
            if url not in urls:
                urls.append(url)
    return NodesList(tuple(tunnels[:MAX_NODES]), tuple(urls[:MAX_NODES]))


class NodeAnnouncer:
    """Sends ``nodes.list`` to the agents that take it, when they say hello and
    when the list changes."""

    def __init__(self, agents: AgentRegistry) -> None:
        self._agents = agents
        self._current: NodesList | None = None  # None: not known yet (or alone)
        # The connected agents that take it, and what each has now (None: nothing yet).
        self._sent: dict[str, NodesList | None] = {}
        agents.subscribe(self._on_agent)
        agents.subscribe_link_lost(self._on_link_lost)

    @property
    def current(self) -> NodesList | None:
        """The list agents are given now (None: not known yet, or alone)."""
        return self._current

    def update(self, nodes: list[NodeRecord]) -> None:
        current = nodes_list(nodes)
        if current == self._current:
            return
        self._current = current
        log.info("broker nodes for agents: %s; %s", current.tunnels, current.urls)
        for agent_id in list(self._sent):
            self._send(agent_id)

    def _on_agent(self, agent_id: str, online: bool) -> None:
        """An agent connected, said hello (again) or left."""
        if not online:
            self._sent.pop(agent_id, None)
            return
        live = self._agents.get(agent_id)
        if live is not None and live.nodes:
            self._sent.setdefault(agent_id, None)
            self._send(agent_id)

    def _on_link_lost(self, agent_id: str) -> None:
        """Back to its doorbell: its next tunnel is told again."""
        self._sent.pop(agent_id, None)

    def _send(self, agent_id: str) -> None:
        live = self._agents.get(agent_id)
        if live is None or self._current is None or self._sent.get(agent_id) == self._current:
            return
        if not live.awake:  # only its doorbell: it is told when its tunnel says hello
            self._sent.pop(agent_id, None)
            return
        try:
            live.send(self._current)
        except TunnelError as exc:  # closing: it gets the list when it is back
            log.info("agent=%s no nodes.list sent: %s", agent_id, exc)
            return
        self._sent[agent_id] = self._current
