"""Which agents are online right now: through an SSH tunnel, a doorbell, or both.

In memory on purpose: after a broker restart every agent is offline until it
dials again, which is the truth. What an agent *is* (its key, hostname) lives
in the store; this only knows what is live.

An agent is online while it has an SSH link **or** a doorbell (``doorbell.py``):
an idle agent holds only its doorbell, and ``wake`` rings it when an action
needs the PC, then waits for the SSH link (and its Hello). Only online ↔
offline reaches the listeners: an SSH link coming or going while the doorbell
stands only changes ``LiveAgent.awake``.

Only online ↔ offline reaches the connectivity audit too, once each way whatever
the interleaving: a tunnel and a doorbell (or two tunnels) of an offline agent
that come at once both ``arrive``, and only the first writes its connect record;
the others wait for it and then join an agent that is online already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from allowhelp.broker.audit.connectivity import ConnectRecorded
from allowhelp.broker.errors import TunnelError
from allowhelp.broker.tunnel.doorbell import Bell
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import Hello, Message
from allowhelp.protocol.monitors import Monitor
from allowhelp.protocol.monitors import decode as decode_monitors
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)
WAKE_TIMEOUT = 20.0


@dataclass(slots=True)  # one per online agent: no per-instance dict
class LiveAgent:
    agent_id: str
    link: AgentLink | None  # its SSH tunnel; None while only its doorbell stands
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
    files_view_only: bool = False  # it runs a view-only files grant read-only
    # Its own folders no files session may reach (Hello ``files_hidden``, sessions/fileshidden.py)
    files_hidden: tuple[str, ...] = ()

    bell: Bell | None = None  # its doorbell stream, if one stands
    greeted: bool = False  # its SSH link said hello (a woken agent is asked after that)

    @property
    def nobody_signed_in(self) -> bool:
        return self.system and not self.user

    @property
    def awake(self) -> bool:
        """It has an SSH link (else only its doorbell stands)."""
        return self.link is not None

    @property
    def holder(self) -> AgentLink | Bell | None:
        """What keeps it online: the SSH link, else the doorbell."""
        return self.link if self.link is not None else self.bell

    def send(self, message: Message) -> None:
        """Over its SSH link's control channel; ``TunnelError`` when it has none."""
        if self.link is None:
            raise TunnelError("the agent is not awake (only its doorbell stands)")
        self.link.send(message)

    def close(self) -> None:
        """Drop its SSH link and end its doorbell stream (removed, held elsewhere)."""
        if self.link is not None:
            self.link.close()
        if self.bell is not None:
            self.bell.end()

    def said(self, message: Hello) -> None:
        """Take the Hello's fields (the SSH link's, else the doorbell's)."""
        self.system = message.system
        self.jobs = message.jobs
        self.chat = message.chat
        self.invites = message.invites
        self.files_view_only = message.files_view_only
        self.files_hidden = message.files_hidden
        self.nodes = message.nodes
        self.all_monitors = message.all_monitors
        self.user = plain_text(message.user, 64)
        self.language = message.language  # unknown ones get English words (phrase.py)
        self.screen = plain_text(message.screen, 20)
        self.screen_problem = plain_text(message.screen_problem, 300)
        self.desktop = plain_text(message.desktop, 200)
        self.monitors = reported_monitors(self.agent_id, message.monitors)


def reported_monitors(agent_id: str, line: str) -> tuple[Monitor, ...]:
    """The monitors an agent's Hello lists; a malformed list counts as none (then a
    request can name no monitor: deny by default), said in the log."""
    try:
        return decode_monitors(line)
    except ValueError as exc:
        log.warning("agent=%s reported unreadable monitors: %s", agent_id, exc)
        return ()


Listener = Callable[[str, bool], None]


class Waking:
    """One outstanding ring of an agent: why, who waits, and the record once awake."""

    __slots__ = ("future", "reason", "waiters")

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.future: asyncio.Future[LiveAgent | None] = asyncio.get_running_loop().create_future()
        self.waiters = 0


LinkLost = Callable[[str], None]  # an SSH link went while the agent stays online
# Puts an offline agent's connect on the record (``audit/connectivity.py``); says
# "refused" when it could not be (then the agent does not come online).
Recorder = Callable[[], Awaitable[ConnectRecorded]]
ONLINE: Final = "online"  # ``arrive``: no record, the agent was online already
Arrival = ConnectRecorded | Literal["online"]


class AgentRegistry:
    def __init__(self) -> None:
        self._live: dict[str, LiveAgent] = {}
        self._listeners: list[Listener] = []
        self._link_lost: list[LinkLost] = []
        # One outstanding ring per agent: its reason and who waits for the SSH link.
        self._waking: dict[str, Waking] = {}
        # An offline agent's connect record being written: the others that come wait.
        self._arriving: dict[str, asyncio.Future[None]] = {}

    # coming online

    async def arrive(self, agent_id: str, record: Recorder) -> Arrival:
        """Before a tunnel or a doorbell joins: ``ONLINE`` when the agent is online
        already (nothing to record), else what ``record`` said of its connect.

        Unless "refused", the caller joins (``attach``, ``ring_in``) or gives up
        (and records the disconnect of a connect it recorded) with no await in
        between. Only one connect record per offline agent is in flight: whoever
        comes meanwhile waits for it, then looks again (online now, or offline
        again if the first gave up: then it records its own)."""
        while agent_id not in self._live:
            writing = self._arriving.get(agent_id)
            if writing is None:
                break
            await asyncio.shield(writing)
        else:
            return ONLINE
        writing = self._arriving[agent_id] = asyncio.get_running_loop().create_future()
        try:
            return await record()
        finally:  # the caller joins or gives up before the waiters look again
            del self._arriving[agent_id]
            writing.set_result(None)

    # the SSH link

    def attach(self, agent_id: str, link: AgentLink, peer: str) -> None:
        """Register a new tunnel; an older one for the same agent is dropped.

        Only one tunnel per identity: a half-dead connection the agent has
        already given up on must not shadow the fresh one. A standing doorbell
        stays; the record keeps its Hello fields until the tunnel's Hello.
        """
        live = self._live.get(agent_id)
        old = None
        if live is None:
            self._live[agent_id] = LiveAgent(agent_id, link, peer)
        else:
            old, live.link, live.peer, live.greeted = live.link, link, peer, False
        if old is not None and old is not link:  # what ran over it is lost with it
            old.close()
            for lost in list(self._link_lost):
                lost(agent_id)
        self._notify(agent_id, True)

    def detach(self, agent_id: str, link: AgentLink) -> bool:
        """Forget the tunnel if it is still the current one; says whether it was.
        With its doorbell standing the agent stays online (``awake`` turns False)."""
        live = self._live.get(agent_id)
        if live is None or live.link is not link:
            return False
        live.link, live.greeted = None, False
        if live.bell is None:
            self._gone(agent_id)
        else:  # still online: what ran over the tunnel (sessions) is lost all the same
            live.peer = live.bell.peer
            for lost in list(self._link_lost):
                lost(agent_id)
        return True

    def greeted(self, agent_id: str) -> None:
        """The SSH link's Hello arrived (its fields are taken): whoever waits to
        ask the woken agent asks now."""
        live = self._live.get(agent_id)
        if live is None or live.link is None:
            return
        live.greeted = True
        waking = self._waking.pop(agent_id, None)
        if waking is not None and not waking.future.done():
            waking.future.set_result(live)

    # the doorbell

    def ring_in(self, agent_id: str, bell: Bell, hello: Hello) -> bool:
        """A doorbell stands for the agent; a previous one of the same agent ends.
        True when this brought the agent online (it was offline)."""
        live = self._live.get(agent_id)
        came = live is None
        if live is None:
            live = self._live[agent_id] = LiveAgent(agent_id, None, bell.peer)
        elif live.bell is not None and live.bell is not bell:
            live.bell.end()
        live.bell = bell
        if live.link is None:  # the SSH link's Hello, when there is one, is newer
            live.said(hello)
            live.peer = bell.peer
        waking = self._waking.get(agent_id)
        if waking is not None and live.link is None:
            bell.ring(waking.reason)  # the ring the older stream may have lost
        self._notify(agent_id, True)
        return came

    def ring_out(self, agent_id: str, bell: Bell) -> bool:
        """A doorbell stream ended; True when the agent went offline with it."""
        bell.end()
        live = self._live.get(agent_id)
        if live is None or live.bell is not bell:
            return False
        live.bell = None
        if live.link is not None:
            return False
        self._gone(agent_id)
        return True

    async def wake(
        self,
        agent_id: str,
        reason: str,
        timeout: float = WAKE_TIMEOUT,  # noqa: ASYNC109 (the contract's name, WAVE6)
    ) -> LiveAgent | None:
        """The awake record at once; else ring its doorbell and wait until its SSH
        link attached and said hello (a link that has not said hello yet is waited
        for, not rung for: a request is judged on a fresh Hello). None: offline, or
        not awake in ``timeout``. Rings are coalesced: one per agent while anyone
        waits for it; the last waiter to give up lets the next wake ring again."""
        live = self._live.get(agent_id)
        if live is None:
            return None
        if live.link is not None and live.greeted:
            return live
        waking = self._waking.get(agent_id)
        if waking is None:
            if live.link is None and live.bell is None:
                return None
            waking = self._waking[agent_id] = Waking(reason)
            if live.link is None and live.bell is not None:
                live.bell.ring(reason)
        waking.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waking.future)
        except TimeoutError:
            return None
        finally:
            waking.waiters -= 1
            if not waking.waiters and self._waking.get(agent_id) is waking:
                del self._waking[agent_id]

    # everyone

    def changed(self, agent_id: str) -> None:
        """What is known about a live agent changed (it said hello): tell listeners."""
        if agent_id in self._live:
            self._notify(agent_id, True)

    def get(self, agent_id: str) -> LiveAgent | None:
        return self._live.get(agent_id)

    def still(self, agent_id: str, link: AgentLink | None) -> AgentLink | None:
        """``link`` while it is still the agent's tunnel, else None: what a caller
        decided on before an await is checked after it (nothing may send on a newer
        tunnel than the one it judged: a ``LiveAgent`` outlives its tunnels)."""
        live = self._live.get(agent_id)
        return link if link is not None and live is not None and live.link is link else None

    def connected(self) -> list[LiveAgent]:
        return list(self._live.values())

    def online(self, agent_id: str) -> bool:
        return agent_id in self._live

    def count(self) -> int:
        return len(self._live)

    def close_all(self) -> None:
        """Shutdown: every tunnel closes and every doorbell stream ends."""
        for live in list(self._live.values()):
            live.close()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def subscribe_link_lost(self, listener: LinkLost) -> Callable[[], None]:
        """Told when an SSH link goes while the agent stays online (its doorbell
        stands, or a newer tunnel replaced it); going offline is told to
        ``subscribe``'s listeners instead."""
        self._link_lost.append(listener)
        return lambda: self._link_lost.remove(listener)

    def _gone(self, agent_id: str) -> None:
        del self._live[agent_id]
        waking = self._waking.pop(agent_id, None)
        if waking is not None and not waking.future.done():
            waking.future.set_result(None)
        self._notify(agent_id, False)

    def _notify(self, agent_id: str, online: bool) -> None:
        for listener in list(self._listeners):
            listener(agent_id, online)
