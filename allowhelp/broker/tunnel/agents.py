"""Which agents are connected right now, and through which tunnel.

In memory on purpose: after a broker restart every agent is offline until it
dials again, which is the truth. What an agent *is* (its key, hostname) lives
in the store; this only knows what is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.monitors import Monitor


@dataclass
class LiveAgent:
    agent_id: str
    link: AgentLink
    peer: str
    connected_since: float = field(default_factory=time.time)
    # From its Hello: a machine service (``run --system``) and who is signed in
    # there now ("": nobody). A per-user agent's user is always there.
    system: bool = False
    user: str = ""
    # The PC user's language (a verification phrase list's code; "en" otherwise).
    language: str = "en"
    jobs: bool = False  # it runs signed fleet jobs or refuses them (``Hello.jobs``)
    # What the session offers for the screen (x11 | wlroots | portal | none; "": the
    # agent is older and did not say), why not, and the desktop it saw.
    screen: str = ""
    screen_problem: str = ""
    desktop: str = ""
    monitors: tuple[Monitor, ...] = ()  # the session's monitors (Hello ``monitors``)
    chat: bool = False  # it takes chat.message and files.transfer (Hello ``chat``)
    invites: bool = False  # it takes invitations into running sessions (Hello ``invites``)
    nodes: bool = False  # it takes nodes.list, to fail over (Hello ``nodes``, node/peers.py)
    all_monitors: bool = False  # it shows every monitor at once (Hello ``all_monitors``)

    @property
    def nobody_signed_in(self) -> bool:
        return self.system and not self.user


Listener = Callable[[str, bool], None]


class AgentRegistry:
    def __init__(self) -> None:
        self._live: dict[str, LiveAgent] = {}
        self._listeners: list[Listener] = []

    def attach(self, agent_id: str, link: AgentLink, peer: str) -> None:
        """Register a new tunnel; an older one for the same agent is dropped.

        Only one tunnel per identity: a half-dead connection the agent has
        already given up on must not shadow the fresh one.
        """
        old = self._live.get(agent_id)
        self._live[agent_id] = LiveAgent(agent_id, link, peer)
        if old is not None and old.link is not link:
            old.link.close()
        self._notify(agent_id, True)

    def detach(self, agent_id: str, link: AgentLink) -> bool:
        """Forget the tunnel if it is still the current one; says whether it was."""
        live = self._live.get(agent_id)
        if live is None or live.link is not link:
            return False
        del self._live[agent_id]
        self._notify(agent_id, False)
        return True

    def changed(self, agent_id: str) -> None:
        """What is known about a live agent changed (it said hello): tell listeners."""
        if agent_id in self._live:
            self._notify(agent_id, True)

    def get(self, agent_id: str) -> LiveAgent | None:
        return self._live.get(agent_id)

    def connected(self) -> list[LiveAgent]:
        return list(self._live.values())

    def online(self, agent_id: str) -> bool:
        return agent_id in self._live

    def count(self) -> int:
        return len(self._live)

    def close_all(self) -> None:
        for live in list(self._live.values()):
            live.link.close()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, agent_id: str, online: bool) -> None:
        for listener in list(self._listeners):
            listener(agent_id, online)
