"""The consent gate against someone holding the broker's own tunnel key.

The real broker is stopped; a rogue listener with the stolen key takes its
port. The agent authenticates it (the key is right) — and still opens
nothing without a click on the PC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest
from roguekit import (
    Sink,
    TcpSink,
    UnixSink,
    as_sink,
    ask,
    control,
    refused,
    stolen_key_connection,
)

from allowhelp.protocol.control import ConsentDecision, Hello, decode
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM, channel_subsystem
from harness import Agent, Broker, Fleet, agent_call, wait_for, wait_pending


@pytest.fixture(scope="module")
def stolen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    fleet = Fleet(tmp_path_factory.mktemp("gate"))
    try:
        broker = fleet.broker().start()
        agent = fleet.agent()
        assert agent.enroll(broker.token()).returncode == 0
        broker.stop()
        agent.start("--reconnect-cap", "1")
        yield broker, agent
    finally:
        fleet.close()


@pytest.fixture
async def rogue(stolen: tuple[Broker, Agent]) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Accept the agent's next connection with the stolen key."""
    async with stolen_key_connection(stolen[0]) as conn:
        yield conn


async def test_nothing_opens_without_consent(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Agent]
) -> None:
    _, agent = stolen
    conn = rogue
    assert await refused(conn.create_session(Sink, term_type="xterm"))  # a plain shell
    assert await refused(conn.create_session(Sink, command="id"))  # exec
    assert await refused(conn.create_session(Sink, subsystem="sftp"))
    assert await refused(conn.create_session(Sink, subsystem=channel_subsystem("shell", "x" * 16)))
    assert await refused(conn.create_connection(TcpSink, "127.0.0.1", 22))  # direct-tcpip
    assert await refused(conn.create_unix_connection(UnixSink, "/run/dbus/system_bus_socket"))
    assert await refused(conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22))
    assert await refused(conn.start_sftp_client())
    # env is refused too, even on the control channel the broker may open.
    chan, _ = await conn.create_session(Sink, subsystem=CONTROL_SUBSYSTEM)
    chan.close()
    assert agent.proc is not None and agent.proc.poll() is None  # still running


async def test_a_grant_opens_exactly_what_was_granted(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Agent]
) -> None:
    _, agent = stolen
    chan, sink = await control(rogue)
    session_id = "GrantTest0001"
    ask(chan, session_id, "shell")
    await asyncio.to_thread(wait_pending, agent, session_id)
    # Before the click: still nothing.
    assert await refused(
        rogue.create_session(
            Sink, term_type="xterm", subsystem=channel_subsystem("shell", session_id)
        )
    )
    allowed = await asyncio.to_thread(agent_call, agent, "allow", session_id)
    assert allowed.returncode == 0, allowed.stderr
    await asyncio.to_thread(wait_for, lambda: b"consent.decision" in sink.data, 10, "decision")
    messages = [decode(line) for line in sink.data.splitlines()]
    assert isinstance(messages[0], Hello)  # the agent introduces itself first
    decision = next(m for m in messages if isinstance(m, ConsentDecision))
    assert decision.granted and decision.via == "cli"
    assert await refused(
        rogue.create_session(Sink, subsystem=channel_subsystem("screen", session_id))
    )
    shell_chan, shell = as_sink(
        await rogue.create_session(
            Sink,
            term_type="xterm",
            subsystem=channel_subsystem("shell", session_id),
            encoding=None,
            env={"LD_PRELOAD": "/tmp/evil.so", "ALLOWHELP_EVIL": "yes"},
        )
    )
    shell_chan.write(b"echo granted-$((6*7)) [${ALLOWHELP_EVIL}] [${LD_PRELOAD}]\n")
    await asyncio.to_thread(wait_for, lambda: b"granted-42" in shell.data, 10, "shell output")
    assert b"granted-42 [] []" in shell.data  # env requests were not applied
    # One channel per grant: a second shell for the same session is refused.
    assert await refused(
        rogue.create_session(
            Sink, term_type="xterm", subsystem=channel_subsystem("shell", session_id)
        )
    )
    # The user ends it: the channel closes at once.
    ended = await asyncio.to_thread(agent_call, agent, "end", session_id)
    assert ended.returncode == 0
    await asyncio.wait_for(shell.closed.wait(), 2)
    chan.close()


async def test_view_only_grant_does_not_cover_a_shell(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Agent]
) -> None:
    _, agent = stolen
    chan, _sink = await control(rogue)
    session_id = "ViewOnlyTest01"
    ask(chan, session_id, "screen")
    await asyncio.to_thread(wait_pending, agent, session_id)
    assert (
        await asyncio.to_thread(agent_call, agent, "allow", session_id, "--view-only")
    ).returncode == 0
    assert await refused(
        rogue.create_session(
            Sink, term_type="xterm", subsystem=channel_subsystem("shell", session_id)
        )
    )
    chan.close()


async def test_hostile_control_line_closes_the_tunnel_not_the_agent(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Agent]
) -> None:
    _, agent = stolen
    chan, _ = await control(rogue)
    chan.write(b'{"type": "consent.request", "session_id": "../../etc"}\n')
    await asyncio.wait_for(rogue.wait_closed(), 10)
    assert agent.proc is not None and agent.proc.poll() is None
    assert "bad control channel" in Path(agent.log).read_text()


async def test_a_shell_without_a_terminal_fails_with_a_message_not_a_hang(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Agent]
) -> None:
    _, agent = stolen
    chan, _sink = await control(rogue)
    session_id = "NoPtySession01"
    ask(chan, session_id, "shell")
    await asyncio.to_thread(wait_pending, agent, session_id)
    assert (await asyncio.to_thread(agent_call, agent, "allow", session_id)).returncode == 0
    process = await asyncio.wait_for(
        rogue.run(subsystem=channel_subsystem("shell", session_id), encoding=None), 10
    )
    assert process.exit_status == 1
    assert b"needs a terminal" in process.stderr  # type: ignore[operator]
    chan.close()
