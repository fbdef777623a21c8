"""The agent's screen backend without a broker: reasons, options, the process group."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch, ScreenUnavailable, screen_command
from allowhelp.agent.x11vnc import explain_exit

X11VNC_DIR = "/usr/bin"


def test_missing_x11vnc_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(ScreenUnavailable, match="x11vnc is not installed"):
        screen_command({"DISPLAY": ":0", "PATH": str(tmp_path)}, view_only=False)


def test_no_display_is_refused_before_looking_for_x11vnc() -> None:
    with pytest.raises(ScreenUnavailable, match="without DISPLAY"):
        screen_command({"PATH": X11VNC_DIR}, view_only=False)


def test_x11vnc_options() -> None:
    control = screen_command({"DISPLAY": ":5", "PATH": X11VNC_DIR}, view_only=False)
    viewer = screen_command({"DISPLAY": ":5", "PATH": X11VNC_DIR}, view_only=True)
    assert control[0].endswith("x11vnc") and control[1] == "-norc"
    assert control[control.index("-display") + 1] == ":5"
    for option in ("-inetd", "-once", "-safer", "-nocmds", "-nonc", "-noipv6"):
        assert option in control
    for never in ("-forever", "-shared", "-rfbport", "-listen", "-http", "-q"):
        assert never not in control
    assert "-viewonly" not in control and "-nosel" not in control
    assert {"-viewonly", "-nosel"} <= set(viewer)


def test_the_test_knob_replaces_x11vnc_and_is_off_by_default() -> None:
    command = screen_command({TEST_COMMAND_ENV: "/bin/fake --mode 'a b'"}, view_only=True)
    assert command == ["/bin/fake", "--mode", "a b"]
    with pytest.raises(ScreenUnavailable):
        screen_command({TEST_COMMAND_ENV: "  "}, view_only=False)


def test_exit_explanations() -> None:
    said = explain_exit(1, b'12/01/2026 10:00:00 XOpenDisplay(":9") failed.\nhelp text\n')
    assert 'XOpenDisplay(":9") failed' in said
    assert explain_exit(-11, b"") == "the screen sharer stopped (signal 11)"
    assert explain_exit(2, b"12/01/2026 10:00:01 \x1b[31mbad thing\n\n") == (
        "the screen sharer stopped (status 2): [31mbad thing"
    )


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[2]) == pgid:
                members.append(int(entry.name))
    return members


async def test_bytes_go_through_the_socketpair_both_ways() -> None:
    out = Collect()
    echo = "import os\nwhile (d := os.read(0, 4096)): os.write(1, d)"
    exits: list[tuple[int, bytes]] = []
    proc = ScreenProcess(
        out, PairLaunch([sys.executable, "-c", echo], {}), lambda s, e: exits.append((s, e))
    )
    try:
        proc.write(b"RFB 003.008\n")
        await asyncio.wait_for(out.got.wait(), 10)
        assert bytes(out.data) == b"RFB 003.008\n"
    finally:
        proc.close()
    assert not exits  # closed by us: no exit report


async def test_a_failing_program_reports_its_last_words() -> None:
    out = Collect()
    exits: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    script = "import sys; sys.stderr.write('cannot open display\\n'); sys.exit(3)"
    ScreenProcess(
        out, PairLaunch([sys.executable, "-c", script], {}), lambda s, e: exits.put_nowait((s, e))
    )
    status, stderr = await asyncio.wait_for(exits.get(), 10)
    assert status == 3 and b"cannot open display" in stderr


async def until(fact: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``fact`` without blocking the loop the screen process runs on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not fact():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_close_kills_the_whole_process_group() -> None:
    ready = Collect()
    script = "sleep 300 & echo started; sleep 300"
    proc = ScreenProcess(ready, PairLaunch(["sh", "-c", script], {}), lambda s, e: None)
    await asyncio.wait_for(ready.got.wait(), 10)  # the background sleep is forked
    await until(lambda: len(group_members(proc.pid)) >= 2, 10, "sh and its background sleep")
    proc.close()
    await until(lambda: group_members(proc.pid) == [], 5, "the whole group to be gone")
