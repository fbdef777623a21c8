"""What a viewer sends before the screen server is there: held, then passed on whole.

The machine service asks the user's session helper to start the screen server and
bridges it once the helper hands over its socket. Until then the viewer's bytes
wait in the service, up to ``programinput.MAX_EARLY_INPUT``; past that the service
stops reading the channel, so the sender waits on the SSH window (it used to keep
the first 64 KiB and drop the rest without a word).

Here a real machine service and a real helper (as a local user made for the test)
serve a rogue broker holding the tunnel key: nothing between it and the agent
checks or slows the bytes. The helper is stopped (SIGSTOP) while the screen opens,
so the server cannot be there yet; its screen program (the test knob) writes down
every byte it gets. The agent's own screen server (``screen.py``: wayvnc's socket
answers a moment after it starts) holds the same way, with a real program behind a
socket that answers late.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncssh
import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine, child_of, stolen_machine
from roguekit import Sink, as_sink, ask, control, refused, stolen_key_connection

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.agent.programinput import MAX_EARLY_INPUT
from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch
from allowhelp.certs.ssh_options import CHANNEL_PACKET_SIZE, CHANNEL_WINDOW
from allowhelp.protocol.kinds import channel_subsystem
from harness import Broker, wait_for

OWNER = "ahtidy1"
# Far more than the service holds and one SSH window: without the pause it was all
# taken (and all but the first 64 KiB dropped) before the server was there.
PAYLOAD = hashlib.shake_256(b"early input").digest(4 * CHANNEL_WINDOW)


@pytest.fixture(scope="module")
def stolen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with stolen_machine(tmp_path_factory.mktemp("early"), OWNER) as pair:
        yield pair


@pytest.fixture
async def rogue(stolen: tuple[Broker, Machine]) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with stolen_key_connection(stolen[0]) as conn:
        yield conn


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_for`` without blocking the event loop the rogue's channel runs on."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


@pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
async def test_what_the_viewer_sends_before_the_server_is_there_arrives_whole_in_order(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    _, machine = stolen
    record = machine.root / "early-received"
    record.touch()
    account = pwd.getpwnam(OWNER)
    os.chown(record, account.pw_uid, account.pw_gid)
    recorder = f"/bin/sh -c 'echo RFB 003.008; exec cat >> {record}'"
    helper = await asyncio.to_thread(
        machine.start_helper, OWNER, (f"{TEST_COMMAND_ENV}={recorder}",)
    )
    helper_pid = child_of(helper.pid)  # runuser's child: the helper itself
    chan, _sink = await control(rogue)
    session_id = "EarlyInput0001"
    ask(chan, session_id, "screen")
    await asyncio.to_thread(wait_for, lambda: machine.pending(OWNER), 10, "the prompt")
    allowed = await asyncio.to_thread(machine.cli, OWNER, "allow", session_id)
    assert allowed.returncode == 0, allowed.stderr

    os.kill(helper_pid, signal.SIGSTOP)  # it cannot answer the service's `open` now
    try:
        screen_chan, seen = as_sink(
            await rogue.create_session(
                Sink, subsystem=channel_subsystem("screen", session_id), encoding=None
            )
        )
        screen_chan.write(PAYLOAD)

        def taken() -> int:
            return len(PAYLOAD) - screen_chan.get_write_buffer_size()

        # The service's SSH window lets one window's worth leave the sender at once...
        await until(lambda: taken() >= CHANNEL_WINDOW, 15, "the first window to be sent")
        # ...and a round trip later no more has: had the service read on (and dropped)
        # what it could not hold, it would have opened the window again before answering.
        assert await refused(rogue.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", 9))
        assert taken() < CHANNEL_WINDOW + MAX_EARLY_INPUT + CHANNEL_PACKET_SIZE, taken()
        assert record.read_bytes() == b"", "the screen program ran before its helper did"
    finally:
        os.kill(helper_pid, signal.SIGCONT)
        os.kill(helper.pid, signal.SIGCONT)  # runuser stops itself when its child stops

    await until(lambda: record.stat().st_size >= len(PAYLOAD), 30, "every byte at the server")
    assert record.stat().st_size == len(PAYLOAD)
    assert record.read_bytes() == PAYLOAD, "the bytes arrived changed or out of order"
    assert b"RFB 003.008" in seen.data  # the server's own words came back to the viewer
    ended = await asyncio.to_thread(machine.cli, OWNER, "end", session_id)
    assert ended.returncode == 0, ended.stderr
    await asyncio.wait_for(seen.closed.wait(), 10)


class Channel:
    """What a ``GatedChannel`` is to a screen: it takes the server's bytes, and stops
    and starts reading the viewer's."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reading = True
        self.pauses = 0

    def write(self, data: bytes) -> None:
        self.data += data

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True


class LateLaunch(PairLaunch):
    """A real program whose socket answers only once ``ready`` is set (as wayvnc's)."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv, {})
        self.ready = asyncio.Event()

    async def connect(self) -> socket.socket:
        await self.ready.wait()
        return await super().connect()


RECORDER = """
import os, sys
with open(sys.argv[1], "ab") as f:
    while d := os.read(0, 65536):
        f.write(d)
        f.flush()
"""


async def test_the_agents_own_screen_server_gets_what_came_before_its_socket_answered(
    tmp_path: Path,
) -> None:
    record = tmp_path / "received"
    record.touch()
    launch = LateLaunch([sys.executable, "-c", RECORDER, str(record)])
    channel = Channel()
    screen = ScreenProcess(channel, launch, lambda status, said: None)
    chunk = 16 * 1024
    sent = 0
    try:
        while channel.reading:  # as asyncssh: nothing is delivered once reading stops
            screen.write(PAYLOAD[sent : sent + chunk])
            sent += chunk
            assert sent <= len(PAYLOAD), "the viewer was never stopped"
        assert sent == MAX_EARLY_INPUT, sent  # held up to the bound, then stopped
        assert channel.pauses == 1
        launch.ready.set()
        await until(lambda: channel.reading, 10, "reading again once the socket answered")
        screen.write(PAYLOAD[sent:])
        await until(lambda: record.stat().st_size >= len(PAYLOAD), 20, "every byte")
    finally:
        screen.close()
    assert screen.ended is not None
    await asyncio.wait_for(screen.ended, 10)
    assert record.read_bytes() == PAYLOAD, "the bytes arrived changed or out of order"
