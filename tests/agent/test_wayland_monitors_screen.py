"""Picking a monitor on a wlroots desktop, for real: sway headless with two outputs.

sway runs as a local user (``ahmonitors``) with ``WLR_HEADLESS_OUTPUTS=2``:
HEADLESS-1 (1024x768, foot) and HEADLESS-2 right of it (800x600, one solid
colour). The machine service and the user's session helper run as in
``test_wayland_screen.py``. The hello lists both outputs (``swaymsg``); a
request for HEADLESS-2 gets wayvnc ``--output=HEADLESS-2`` through the helper and
a picture of that output's size and colour; "all" runs one wayvnc per output
(wayvnc 0.5 shows one output at a time) composed into one picture at sway's
layout (``wayvncall``): HEADLESS-2's colour in its place, a view-only pointer
that moves nothing, a control pointer that sway sees on HEADLESS-2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

import pytest
from desktopworld import World, desk_fixture, desktop_marks, world_fixture
from machinekit import SYSTEM_PY
from waylandkit import (
    CAN_RUN_SWAY,
    SECOND_COLOUR,
    SECOND_SIZE,
    SWAY_SIZE,
    WHY_NO_SWAY,
    SwayDesktop,
    sway_desktop,
)

from harness import Desk, wait_for
from screenkit import (
    RfbClient,
    ServerInit,
    gone,
    key_event,
    listening_inodes,
    pointer_event,
    processes,
    screen_socket,
    socket_inodes,
    variance,
)

USER = "ahmonitors"
RETURN = 0xFF0D

pytestmark = desktop_marks(CAN_RUN_SWAY, WHY_NO_SWAY)


Sway = World[SwayDesktop]

world = world_fixture(USER, lambda user: sway_desktop(user, second_output=True), "wayland-monitors")
desk = desk_fixture()


def share(init: ServerInit, pixels: bytes, colour: tuple[int, int, int]) -> float:
    """Which share of the picture is ``colour`` (the cursor may cover a few pixels)."""
    size = init.bpp // 8
    value = sum(
        (part * maximum // 255) << shift
        for part, maximum, shift in zip(colour, init.maxima, init.shifts, strict=True)
    )
    mask = sum(m << shift for m, shift in zip(init.maxima, init.shifts, strict=True))
    order: Literal["big", "little"] = "big" if init.big_endian else "little"
    count = len(
        [
            at
            for at in range(0, len(pixels), size)
            if int.from_bytes(pixels[at : at + size], order) & mask == value
        ]
    )
    return count / (len(pixels) // size)


def test_the_hello_lists_both_outputs(world: Sway) -> None:
    row = world.agent_row()
    assert row["screen"] == "wlroots", row
    width, height = SWAY_SIZE
    second_w, second_h = SECOND_SIZE
    assert [(m["name"], m["width"], m["height"], m["x"], m["y"]) for m in row["monitors"]] == [
        ("HEADLESS-1", width, height, 0, 0),
        ("HEADLESS-2", second_w, second_h, width, 0),
    ]


def test_the_second_output_alone(world: Sway, desk: Desk) -> None:
    machine = world.machine
    answer = desk.request(machine.agent_id, kind="screen", reason="two", monitor="HEADLESS-2")
    assert answer.status_code == 201, answer.text
    session_id = answer.json()["id"]
    wait_for(
        lambda: any(p["session_id"] == session_id for p in machine.pending(USER)),
        15,
        "the prompt in the user's session",
    )
    assert machine.cli(USER, "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")

    async def scenario() -> tuple[ServerInit, float, list[int]]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            pids: list[int] = processes("--output=HEADLESS-2", "wayvnc")
            deadline = asyncio.get_running_loop().time() + 15
            while True:  # the background may be painted after wayvnc's first picture
                await client.request_raw(init)
                rects = await client.framebuffer_update(init)
                seen = share(init, b"".join(p for *_, p in rects), SECOND_COLOUR)
                if seen > 0.9 or asyncio.get_running_loop().time() > deadline:
                    return init, seen, pids

    init, seen, pids = asyncio.run(scenario())
    assert (init.width, init.height) == SECOND_SIZE
    assert seen > 0.9, f"only {seen:.0%} of the picture is the second output's colour"
    assert len(pids) == 1, "wayvnc did not get --output=HEADLESS-2"
    assert "--unix-socket" in Path(f"/proc/{pids[0]}/cmdline").read_text()
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 15, "wayvnc to be gone after the technician left")


def consented_to_all(world: Sway, desk: Desk, *, view_only: bool) -> str:
    return world.consented(desk, view_only=view_only, reason="all of them", monitor="all")


def region(init: ServerInit, pixels: bytes, box: tuple[int, int, int, int]) -> bytes:
    """The pixels of ``box`` (x, y, width, height) of a whole picture, row by row."""
    x, y, w, h = box
    size = init.bpp // 8
    rows = (
        pixels[((y + r) * init.width + x) * size : ((y + r) * init.width + x + w) * size]
        for r in range(h)
    )
    return b"".join(rows)


def engine_pids() -> list[int]:
    """The engine, then one wayvnc per output."""
    wayvncs = [processes(f"--output={name}", "wayvnc") for name in ("HEADLESS-1", "HEADLESS-2")]
    return processes("allowhelp.agent.wayvncall", "python3") + [p for ps in wayvncs for p in ps]


def focused_output(sway: SwayDesktop) -> str:
    done = subprocess.run(
        [*sway.as_user(f"SWAYSOCK={sway.swaysock}"), "swaymsg", "-t", "get_outputs", "-r"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    outputs = json.loads(done.stdout or "[]")
    return next((str(o["name"]) for o in outputs if o.get("focused")), "")


ALL_SIZE = (SWAY_SIZE[0] + SECOND_SIZE[0], max(SWAY_SIZE[1], SECOND_SIZE[1]))
SECOND_BOX = (SWAY_SIZE[0], 0, *SECOND_SIZE)


def test_all_outputs_in_one_picture_view_only(world: Sway, desk: Desk) -> None:
    """One wayvnc per output (wayvnc 0.5 serves one), composed at sway's layout."""
    machine, sway = world.machine, world.desktop
    marker = Path(f"/home/{USER}/typed-under-view-only")
    marker.unlink(missing_ok=True)
    session_id = consented_to_all(world, desk, view_only=True)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            assert (init.width, init.height) == ALL_SIZE
            deadline = asyncio.get_running_loop().time() + 15
            while True:  # the background may be painted after wayvnc's first picture
                await client.request_raw(init)
                (_, _, _, _, pixels), *_ = await client.framebuffer_update(init)
                second = share(init, region(init, pixels, SECOND_BOX), SECOND_COLOUR)
                if second > 0.9 or asyncio.get_running_loop().time() > deadline:
                    break
            assert second > 0.9, f"only {second:.0%} of HEADLESS-2's place is its colour"
            first = share(init, region(init, pixels, (0, 0, *SWAY_SIZE)), SECOND_COLOUR)
            assert first < 0.01, "HEADLESS-2's colour on HEADLESS-1's place"
            assert variance(region(init, pixels, (0, 0, *SWAY_SIZE)), init.bpp) > 2
            pids = engine_pids()
            assert len(pids) == 3, pids  # the engine and one wayvnc per output
            listening = listening_inodes()
            for pid in pids:
                assert not socket_inodes(pid) & listening, f"pid {pid} listens on TCP"
            for pid in pids[1:]:
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                assert "--disable-input" in argv and "--unix-socket" in argv, argv
            for char in f"\ncd\ntouch {marker.name}\n":
                keysym = RETURN if char == "\n" else ord(char)
                await client.send(key_event(keysym, True) + key_event(keysym, False))
            await client.send(pointer_event(0, SWAY_SIZE[0] + 100, 100))
            await client.request_raw(init)
            await client.framebuffer_update(init)
            assert focused_output(sway) == "HEADLESS-1", "a view-only pointer moved in sway"
            ended = await asyncio.to_thread(machine.cli, USER, "end", session_id)
            assert ended.returncode == 0, ended.stderr
            return pids

    pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["end_reason"] == "user"
    wait_for(lambda: gone(pids), 15, "the engine and both wayvnc to be gone")
    assert not list(sway.runtime.glob("allowhelp-screen-*")), "the private folder is left"
    assert not marker.exists(), "a key typed under a view-only grant reached foot"


def test_the_pointer_lands_on_the_second_output_and_keys_reach_foot(
    world: Sway, desk: Desk
) -> None:
    sway = world.desktop
    marker = Path(f"/home/{USER}/typed-through-all-outputs")
    marker.unlink(missing_ok=True)
    assert focused_output(sway) == "HEADLESS-1"
    session_id = consented_to_all(world, desk, view_only=False)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            pids = engine_pids()
            await client.send(pointer_event(0, SWAY_SIZE[0] + 100, 100))
            await client.request_raw(init)
            await client.framebuffer_update(init)
            await asyncio.to_thread(
                wait_for,
                lambda: focused_output(sway) == "HEADLESS-2",
                10,
                "sway to focus HEADLESS-2 under the pointer",
            )
            await client.send(pointer_event(0, 100, 100))  # and back, over foot
            await asyncio.to_thread(
                wait_for, lambda: focused_output(sway) == "HEADLESS-1", 10, "HEADLESS-1 again"
            )
            for char in f"\ncd\ntouch {marker.name}\n":  # keys: to the first wayvnc
                keysym = RETURN if char == "\n" else ord(char)
                await client.send(key_event(keysym, True) + key_event(keysym, False))
            await asyncio.to_thread(wait_for, marker.exists, 15, "the typed command to run")
            return pids

    pids = asyncio.run(scenario())  # the technician leaves
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 15, "the engine and both wayvnc to be gone")


ROOT = str(Path(__file__).resolve().parents[2])
# when the helper's SIGTERM comes after the folder appears: at once (the wayvnc are
# being started), then while they start, connect and are read
TERM_AFTER = (0.0, 0.0, 0.0, 0.005, 0.02, 0.05, 0.2)


@pytest.mark.parametrize("delay", TERM_AFTER)
def test_a_sigterm_during_start_up_leaves_no_private_folder(world: Sway, delay: float) -> None:
    """The session helper ends the engine's process group with SIGTERM whenever the
    session ends, the engine's start-up included: its 0700 folder goes with it."""
    sway = world.desktop
    ours, theirs = socket.socketpair()
    env = (*sway.session_env(), f"PYTHONPATH={ROOT}", "PATH=/usr/bin:/bin")
    argv = [*sway.as_user(*env), SYSTEM_PY, "-m", "allowhelp.agent.wayvncall", "--control"]
    engine = subprocess.Popen(
        argv,
        stdin=theirs.fileno(),
        stdout=theirs.fileno(),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    theirs.close()
    try:
        wait_for(
            lambda: list(sway.runtime.glob("allowhelp-screen-*")), 20, "the folder", step=0.0005
        )
        time.sleep(delay)  # the moment of start-up under test, not a wait for something
        os.killpg(engine.pid, signal.SIGTERM)  # as the helper does (reaper.end_process_group)
        engine.wait(20)
        wait_for(lambda: not processes("allowhelp.agent.wayvncall", "python3"), 20, "its end")
        assert not list(sway.runtime.glob("allowhelp-screen-*")), "the private folder is left"
    finally:
        ours.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.pid, signal.SIGKILL)
        engine.wait(20)
        for left in sway.runtime.glob("allowhelp-screen-*"):
            shutil.rmtree(left, ignore_errors=True)  # so that one failure is not the next
