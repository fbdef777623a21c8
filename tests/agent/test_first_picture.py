"""The viewer's RFB version said to x11vnc ahead (agent/rfbgreeting.py), for real.

x11vnc's library waits 100 ms on each connection to see whether a WebSocket
opens it; the agent writes the viewer's ``RFB 003.008`` into x11vnc's socket as
it starts it and drops the viewer's own line on its way. Here: the line is
checked and dropped however the channel splits it, and anything else ends the
screen with a plain reason; a real x11vnc on Xvfb completes a viewer's whole
handshake and sends a first picture, through the per-user agent's backend and
through the machine service and a real user's session helper (the helper says
``greeted`` and root drops the line); view-only still refuses input there.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine, local_users, machine_service, passable_folder
from test_screen_agent import Collect

from allowhelp.agent.rfbgreeting import RFB_VERSION, PacedOutput, SaidVersion
from allowhelp.agent.rfbinput import RfbInputError
from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch, greeted, launch_screen
from allowhelp.agent.userprograms import start_screen
from allowhelp.protocol import helper as hp
from harness import TECH, TECH_PW, Desk, staffed_broker, wait_for
from screenkit import RfbClient, gone, listening_inodes, processes, screen_socket, socket_inodes
from xdesk import Xvfb, missing_tools

USER = "ahpicture"
SESSION = "AbCdEfGhIjKlMnOp"  # a well-formed session id
NO_X = missing_tools()

# --- SaidVersion: sans-I/O ----------------------------------------------------


def test_the_viewers_version_is_dropped_however_it_is_split() -> None:
    said = SaidVersion()
    assert said.feed(b"RFB 0") == b""
    assert not said.done
    assert said.feed(b"03.008") == b""
    assert said.feed(b"\n\x01\x01") == b"\x01\x01"  # what follows passes untouched
    assert said.done
    assert said.feed(b"\x03\x00") == b"\x03\x00"


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def pause_reading(self) -> None:
        """Flow control is not what this checks."""

    def resume_reading(self) -> None:
        """Flow control is not what this checks."""


def test_the_servers_words_after_its_version_wait_for_the_viewers_version() -> None:
    """noVNC takes one handshake step per message: x11vnc's version and its security
    types in one message (greeted early, it sends both at once) stalled it in
    Chromium. The version goes on alone; the rest once the viewer said theirs."""
    said, sink = SaidVersion(), Sink()
    paced = PacedOutput(sink, said)
    paced.write(RFB_VERSION + b"\x01\x01")  # x11vnc: its version, then one security type
    assert sink.writes == [RFB_VERSION]
    paced.release()  # nothing from the viewer yet: still held
    assert sink.writes == [RFB_VERSION]
    assert said.feed(RFB_VERSION[:5]) == b"" and said.feed(RFB_VERSION[5:]) == b""
    paced.release()
    assert sink.writes == [RFB_VERSION, b"\x01\x01"]
    paced.write(b"\0\0\0\0")  # from now on, as it comes
    assert sink.writes[-1] == b"\0\0\0\0"


@pytest.mark.parametrize(
    ("first", "shown"),
    [
        (b"RFB 003.003\n", "'RFB 003.003'"),
        (b"RFB 003.007\n", "'RFB 003.007'"),
        (b"GET / HTTP/1.1\r\n", "'GET / HTTP/1'"),
        (b"\x01\x01", "'\\x01\\x01'"),
    ],
)
def test_any_other_first_line_is_refused_plainly(first: bytes, shown: str) -> None:
    with pytest.raises(RfbInputError) as refused:
        SaidVersion().feed(first)
    assert str(refused.value) == f"the viewer spoke {shown} first; the screen needs RFB 003.008"


def test_a_wrong_line_split_in_two_is_refused_at_its_first_wrong_byte() -> None:
    said = SaidVersion()
    assert said.feed(b"RFB 003.") == b""
    with pytest.raises(RfbInputError, match=r"'RFB 003\.003'"):
        said.feed(b"003\n\x01")


# --- a real x11vnc, the per-user agent's backend -------------------------------


@pytest.fixture(scope="module")
def xvfb() -> Iterator[Xvfb]:
    if NO_X:
        pytest.skip(f"missing: {', '.join(NO_X)}")
    server = Xvfb.start()
    yield server
    server.stop()


def x11_env(xvfb: Xvfb) -> dict[str, str]:
    return {"DISPLAY": xvfb.display, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def read_exactly(out: Collect, size: int, timeout: float = 15) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(out.data) < size:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"only {len(out.data)} of {size} bytes came")
        out.got.clear()
        await asyncio.wait_for(out.got.wait(), left)
    data = bytes(out.data[:size])
    del out.data[:size]
    return data


async def test_x11vnc_is_greeted_and_answers_a_whole_handshake(xvfb: Xvfb) -> None:
    launch = launch_screen(x11_env(xvfb), view_only=False)
    assert isinstance(launch, PairLaunch) and greeted(launch) == RFB_VERSION
    out = Collect()
    exits: list[tuple[int, bytes]] = []
    proc = ScreenProcess(out, launch, lambda s, e: exits.append((s, e)))
    try:
        assert await read_exactly(out, 12) == RFB_VERSION  # x11vnc's own line, as ever
        proc.write(RFB_VERSION)  # the viewer's: checked and dropped by the agent
        count = (await read_exactly(out, 1))[0]
        assert 1 in await read_exactly(out, count)
        proc.write(b"\x01")
        assert await read_exactly(out, 4) == b"\0\0\0\0"
        proc.write(b"\x01")  # ClientInit
        head = await read_exactly(out, 24)
        assert struct.unpack_from(">HH", head) == (1280, 800)
        await read_exactly(out, struct.unpack_from(">I", head, 20)[0])
        proc.write(struct.pack(">BBHHHH", 3, 0, 0, 0, 16, 16))  # a small full update
        assert (await read_exactly(out, 1)) == b"\0"  # FramebufferUpdate
    finally:
        proc.close()
    assert not exits


async def test_a_helper_greets_only_when_its_service_asks(xvfb: Xvfb) -> None:
    """A machine service older than the greeting (its ``open`` has no ``greet``) passes
    the viewer's version line on itself: a helper that greeted too would make x11vnc
    read that line as the viewer's choice of security and fail the screen."""
    said = json.loads(hp.Open(SESSION, "screen", "", 0, 0, False, greet=True).encode())
    assert said.pop("greet") is True  # the field an older service does not send
    packet = hp.decode(json.dumps(said).encode())
    assert isinstance(packet, hp.Open) and packet.greet is False
    program = await start_screen(x11_env(xvfb), view_only=False, greet=packet.greet)
    assert program.greeting == b""
    sock = socket.socket(fileno=program.fd)
    sock.settimeout(15)
    try:
        assert sock.recv(12, socket.MSG_WAITALL) == RFB_VERSION  # x11vnc's own line
        sock.sendall(RFB_VERSION)  # the viewer's, passed on by the older service
        count = sock.recv(1)[0]
        assert 1 in sock.recv(count, socket.MSG_WAITALL)  # its security types: a whole handshake
        sock.sendall(b"\x01")
        assert sock.recv(4, socket.MSG_WAITALL) == b"\0\0\0\0"
    finally:
        sock.close()
        await program.end()


async def test_a_viewer_with_another_version_ends_the_screen_plainly(xvfb: Xvfb) -> None:
    out = Collect()
    exits: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    launch = launch_screen(x11_env(xvfb), view_only=True)
    proc = ScreenProcess(out, launch, lambda s, e: exits.put_nowait((s, e)), view_only=True)
    assert await read_exactly(out, 12) == RFB_VERSION
    # the view-only filter follows 3.3 (it lets it by); the line said ahead cannot
    proc.write(b"RFB 003.003\n")
    _status, last_words = await asyncio.wait_for(exits.get(), 15)
    assert b"the viewer spoke 'RFB 003.003' first; the screen needs RFB 003.008" in last_words
    wait_for(lambda: gone([proc.pid]), 10, "x11vnc to be gone")


# --- through the machine service and a real user's session helper ------------


@pytest.fixture(scope="module")
def machine(xvfb: Xvfb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Desk]]:
    if not CAN_RUN:
        pytest.skip(WHY_NOT)
    session = (f"DISPLAY={xvfb.display}",)
    with (
        local_users(USER),
        passable_folder() as root,
        staffed_broker(tmp_path_factory.mktemp("picture")) as fleet,
        machine_service(fleet.brokers[0], root, USER, session) as service,
    ):
        desk = Desk.login(fleet.brokers[0], TECH, TECH_PW)
        yield service, desk
        desk.close()


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid for {pid}")


@pytest.mark.parametrize("view_only", [False, True])
def test_the_users_x11vnc_is_greeted_through_the_machine_service(
    xvfb: Xvfb, machine: tuple[Machine, Desk], view_only: bool
) -> None:
    service, desk = machine
    session_id = service.allowed_screen(desk, USER, view_only=view_only, reason="first picture")

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()  # the viewer's whole 3.8 handshake, line included
            assert (init.width, init.height) == (1280, 800)
            await client.request_raw(init)
            rects = await client.framebuffer_update(init)
            assert sum(w * h for _x, _y, w, h, _p in rects) > 0, "no picture"
            pids = processes(xvfb.display)
            assert len(pids) == 1 and uid_of(pids[0]) == os.stat(f"/home/{USER}").st_uid
            assert ("-viewonly" in Path(f"/proc/{pids[0]}/cmdline").read_text()) is view_only
            assert not socket_inodes(pids[0]) & listening_inodes(), "x11vnc listens on TCP"
            return pids

    pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 15, "x11vnc to be gone after the technician left")


# --- the screen's code loads while the person reads a screen prompt -----------

WARMUP = """
import asyncio, os, sys
from types import SimpleNamespace
from allowhelp.agent.runner import SCREEN_MODULE, ScreenWarmup

async def main(kind):
    ScreenWarmup().prompt(SimpleNamespace(request=SimpleNamespace(kind=kind)))
    before = SCREEN_MODULE in sys.modules
    await asyncio.sleep(0)  # one turn of the loop: after the prompt was shown
    children = open(f"/proc/self/task/{os.getpid()}/children").read().split()
    print(before, SCREEN_MODULE in sys.modules, children)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize(("kind", "loaded"), [("screen", "True"), ("shell", "False")])
def test_a_screen_prompt_loads_the_screen_code_and_starts_nothing(kind: str, loaded: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WARMUP, kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # not at once (the prompt goes first), loaded for a screen only, and no child started
    assert done.stdout.split() == ["False", loaded, "[]"]
