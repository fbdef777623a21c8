"""The registry's doorbell logic and the doorbell book, without sockets (pure logic).

An agent is online while it has an SSH link or a doorbell; only online ↔ offline
reaches the listeners; ``wake`` rings once and waits for the tunnel's Hello.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import cast

import pytest

from allowhelp.broker.errors import TunnelError
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.doorbell import (
    BEAT,
    Bell,
    credentials,
    new_token,
    ring_line,
    token_hash,
    token_matches,
)
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import Hello, Message

AGENT = "a-" + "b" * 20
HELLO = Hello(hostname="pc1", os="Linux", user="ann", version="1.0", language="fr", doorbell="have")


class FakeLink:
    """Stands for an SSH link: the registry only closes it and sends on it."""

    def __init__(self) -> None:
        self.closed = False
        self.sent: list[Message] = []

    def close(self) -> None:
        self.closed = True

    def send(self, message: Message) -> None:
        self.sent.append(message)


def link() -> AgentLink:
    return cast(AgentLink, FakeLink())


class Heard:
    def __init__(self, registry: AgentRegistry) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.lost: list[str] = []
        registry.subscribe(lambda agent_id, online: self.calls.append((agent_id, online)))
        registry.subscribe_link_lost(self.lost.append)


async def lines_of(bell: Bell, count: int, beat_every: float = 5.0) -> list[bytes]:
    """The first ``count`` lines of the bell's stream (or fewer, if it ends first)."""
    got: list[bytes] = []
    async for line in bell.lines(beat_every):
        got.append(line)
        if len(got) == count:
            break
    return got


async def test_a_doorbell_alone_keeps_the_agent_online_with_its_hello() -> None:
    registry = AgentRegistry()
    heard = Heard(registry)
    assert registry.ring_in(AGENT, Bell(AGENT, "peer"), HELLO) is True
    live = registry.get(AGENT)
    assert live is not None and registry.online(AGENT) and not live.awake
    assert (live.user, live.language) == ("ann", "fr")
    assert heard.calls == [(AGENT, True)]
    with pytest.raises(TunnelError):  # nothing goes to a PC that is not awake
        live.send(HELLO)


async def test_the_ssh_link_coming_and_going_is_not_offline() -> None:
    registry = AgentRegistry()
    heard = Heard(registry)
    bell = Bell(AGENT, "peer")
    registry.ring_in(AGENT, bell, HELLO)
    tunnel = link()
    registry.attach(AGENT, tunnel, "ssh-peer")
    live = registry.get(AGENT)
    assert live is not None and live.awake and live.user == "ann"  # the Hello stays
    assert registry.detach(AGENT, tunnel) is True
    assert registry.online(AGENT) and not live.awake
    assert (AGENT, False) not in heard.calls  # never offline
    assert heard.lost == [AGENT]  # but what ran over the tunnel is told it is gone
    assert registry.ring_out(AGENT, bell) is True  # now it is offline
    assert heard.calls[-1] == (AGENT, False) and not registry.online(AGENT)


async def test_a_doorbell_ending_under_a_live_tunnel_is_not_offline() -> None:
    registry = AgentRegistry()
    heard = Heard(registry)
    tunnel = link()
    registry.attach(AGENT, tunnel, "ssh-peer")
    bell = Bell(AGENT, "peer")
    assert registry.ring_in(AGENT, bell, HELLO) is False  # online already
    assert registry.ring_out(AGENT, bell) is False
    assert registry.online(AGENT) and (AGENT, False) not in heard.calls
    assert registry.detach(AGENT, tunnel) and heard.calls[-1] == (AGENT, False)
    assert heard.lost == []  # offline: told to the online listeners instead


async def test_without_a_doorbell_a_lost_tunnel_is_offline_as_before() -> None:
    registry = AgentRegistry()
    heard = Heard(registry)
    tunnel = link()
    registry.attach(AGENT, tunnel, "p")
    assert registry.detach(AGENT, tunnel) and heard.calls == [(AGENT, True), (AGENT, False)]


async def test_a_newer_doorbell_ends_the_older_stream() -> None:
    registry = AgentRegistry()
    heard = Heard(registry)
    old, new = Bell(AGENT, "old"), Bell(AGENT, "new")
    registry.ring_in(AGENT, old, HELLO)
    assert registry.ring_in(AGENT, new, HELLO) is False
    assert old.ended and not new.ended
    assert await lines_of(old, 5) == [BEAT]  # the old stream ends after its first beat
    assert registry.ring_out(AGENT, old) is False  # the older one leaving changes nothing
    assert registry.online(AGENT) and (AGENT, False) not in heard.calls


async def test_close_ends_the_doorbell_and_the_tunnel() -> None:
    registry = AgentRegistry()
    bell, tunnel = Bell(AGENT, "p"), link()
    registry.ring_in(AGENT, bell, HELLO)
    registry.attach(AGENT, tunnel, "p")
    live = registry.get(AGENT)
    assert live is not None
    live.close()
    assert bell.ended and cast(FakeLink, tunnel).closed


async def test_wake_of_an_awake_or_offline_agent_answers_at_once() -> None:
    registry = AgentRegistry()
    assert await registry.wake(AGENT, "wake", timeout=0.01) is None  # offline
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    registry.attach(AGENT, link(), "p")
    registry.greeted(AGENT)
    assert await registry.wake(AGENT, "wake", timeout=0.01) is registry.get(AGENT)
    assert await lines_of(bell, 1) == [BEAT] and not bell.ended  # no ring was queued
    bell.end()
    assert await lines_of(bell, 5) == [BEAT]


async def test_wake_rings_once_and_waits_for_the_tunnels_hello() -> None:
    registry = AgentRegistry()
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    first = asyncio.create_task(registry.wake(AGENT, "consent.request", timeout=5))
    second = asyncio.create_task(registry.wake(AGENT, "job.run", timeout=5))
    await asyncio.sleep(0)  # both are waiting now
    stream = bell.lines(5.0)
    assert await anext(stream) == BEAT
    assert await anext(stream) == ring_line("consent.request")  # coalesced: one ring
    registry.attach(AGENT, link(), "p")
    await asyncio.sleep(0)
    assert not first.done()  # attached, not greeted: the checks need its fresh Hello
    registry.greeted(AGENT)
    live = registry.get(AGENT)
    assert await first is live and await second is live and live is not None and live.awake
    bell.end()
    assert [line async for line in stream] == []


async def test_a_wake_that_times_out_lets_the_next_ring_again() -> None:
    registry = AgentRegistry()
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    assert await registry.wake(AGENT, "wake", timeout=0.05) is None
    waking = asyncio.create_task(registry.wake(AGENT, "job.run", timeout=5))
    got = await lines_of(bell, 3)
    assert got == [BEAT, ring_line("wake"), ring_line("job.run")]
    registry.attach(AGENT, link(), "p")
    registry.greeted(AGENT)
    assert await waking is registry.get(AGENT)


async def test_a_tunnel_that_has_not_said_hello_is_waited_for_not_rung() -> None:
    """A request that comes between the tunnel's attach and its Hello is judged on
    the fresh Hello, not on the doorbell's old one (``hello.json``)."""
    registry = AgentRegistry()
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    registry.attach(AGENT, link(), "p")
    waking = asyncio.create_task(registry.wake(AGENT, "consent.request", timeout=5))
    await asyncio.sleep(0.01)
    assert not waking.done()
    registry.greeted(AGENT)
    assert await waking is registry.get(AGENT)
    bell.end()
    assert await lines_of(bell, 5) == [BEAT]  # no ring: the tunnel was already there


async def test_a_waiter_that_joined_late_outlives_the_first_ones_timeout() -> None:
    registry = AgentRegistry()
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    first = asyncio.create_task(registry.wake(AGENT, "job.run", timeout=0.05))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(registry.wake(AGENT, "consent.request", timeout=5))
    assert await first is None  # gave up; the ring it made still stands for the late one
    assert await lines_of(bell, 2) == [BEAT, ring_line("job.run")]  # rung once
    registry.attach(AGENT, link(), "p")
    registry.greeted(AGENT)
    assert await late is registry.get(AGENT)


async def test_a_wake_pending_when_the_agent_goes_offline_gets_none() -> None:
    registry = AgentRegistry()
    bell = Bell(AGENT, "p")
    registry.ring_in(AGENT, bell, HELLO)
    waking = asyncio.create_task(registry.wake(AGENT, "wake", timeout=5))
    await asyncio.sleep(0)
    registry.ring_out(AGENT, bell)
    assert await waking is None


async def test_a_ring_lost_with_an_old_stream_is_rung_again_on_the_new_one() -> None:
    registry = AgentRegistry()
    old = Bell(AGENT, "old")
    registry.ring_in(AGENT, old, HELLO)
    waking = asyncio.create_task(registry.wake(AGENT, "consent.request", timeout=5))
    await asyncio.sleep(0)
    new = Bell(AGENT, "new")
    registry.ring_in(AGENT, new, HELLO)  # the agent redialled: the ring may be lost
    assert await lines_of(new, 2) == [BEAT, ring_line("consent.request")]
    registry.attach(AGENT, link(), "p")
    registry.greeted(AGENT)
    assert (await waking) is registry.get(AGENT)


async def test_the_ssh_hello_wins_over_the_doorbells() -> None:
    registry = AgentRegistry()
    registry.attach(AGENT, link(), "p")
    live = registry.get(AGENT)
    assert live is not None
    live.said(Hello(hostname="pc1", os="Linux", user="bob", version="1.0"))
    registry.ring_in(AGENT, Bell(AGENT, "p"), HELLO)  # an older hello.json
    assert live.user == "bob"


async def test_close_all_ends_every_stream() -> None:
    registry = AgentRegistry()
    bells = [Bell(f"a-{c * 20}", "p") for c in "cdef"]
    for bell in bells:
        registry.ring_in(bell.agent_id, bell, HELLO)
    registry.close_all()
    assert all(bell.ended for bell in bells)


async def test_beats_come_at_once_and_after_each_quiet_spell() -> None:
    bell = Bell(AGENT, "p")
    lines = await lines_of(bell, 3, beat_every=0.05)
    assert lines == [BEAT, BEAT, BEAT]
    assert json.loads(BEAT) == {"type": "beat"}
    assert json.loads(ring_line("job.run")) == {"type": "ring", "reason": "job.run"}


def test_a_ring_has_a_known_reason_and_is_not_repeated() -> None:
    bell = Bell(AGENT, "p")
    with pytest.raises(ValueError, match="reason"):
        bell.ring("reboot")
    bell.ring("wake")
    bell.ring("wake")
    assert bell._rings == ["wake"]


def test_tokens_are_43_urlsafe_chars_kept_as_sha256() -> None:
    token = new_token()
    assert len(token) == 43 and credentials(f"Doorbell {AGENT}:{token}") == (AGENT, token)
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token_matches(token, token_hash(token))
    assert not token_matches(new_token(), token_hash(token))
    assert not token_matches(token, "")  # an agent that never got a key has none


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"Bearer {AGENT}:{'x' * 43}",
        f"Doorbell {AGENT}",
        f"Doorbell {AGENT}:",
        f"Doorbell ../etc:{'x' * 43}",
        f"Doorbell {AGENT}:{'x' * 65}",
        f"Doorbell {AGENT}:{'x' * 42}=",
        f"Doorbell {AGENT}:short",
    ],
)
def test_malformed_credentials_are_refused(header: str | None) -> None:
    assert credentials(header) is None
