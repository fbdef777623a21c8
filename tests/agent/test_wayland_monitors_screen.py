"""Picking a monitor on a wlroots desktop, for real: sway headless with two outputs.

sway runs as a local user (``ahmonitors``) with ``WLR_HEADLESS_OUTPUTS=2``:
HEADLESS-1 (1024x768, foot) and HEADLESS-2 right of it (800x600, one solid
colour). The machine service and the user's session helper run as in
``test_wayland_screen.py``. The hello lists both outputs (``swaymsg``); a
request for HEADLESS-2 gets wayvnc ``--output=HEADLESS-2`` through the helper and
a picture of that output's size and colour; "all" is refused by the broker
before the PC is asked (wayvnc 0.5 shows one output at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine, local_users, machine_service, passable_folder
from waylandkit import (
    CAN_RUN_SWAY,
    SECOND_COLOUR,
    SECOND_SIZE,
    SWAY_SIZE,
    WHY_NO_SWAY,
    sway_desktop,
)

from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Broker, Desk, staffed_broker, wait_for
from screenkit import RfbClient, ServerInit, gone, processes, screen_socket

USER = "ahmonitors"

pytestmark = [
    pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT),
    pytest.mark.skipif(not CAN_RUN_SWAY, reason=WHY_NO_SWAY),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Broker]]:
    with (
        local_users(USER),
        passable_folder() as root,
        sway_desktop(USER, second_output=True) as sway,
        staffed_broker(tmp_path_factory.mktemp("wayland-monitors")) as fleet,
        machine_service(fleet.brokers[0], root, USER, sway.session_env()) as machine,
    ):
        yield machine, fleet.brokers[0]


@pytest.fixture
def desk(world: tuple[Machine, Broker]) -> Iterator[Desk]:
    desk = Desk.login(world[1], TECH, TECH_PW)
    yield desk
    desk.close()


def agent_row(world: tuple[Machine, Broker]) -> dict[str, Any]:
    machine, broker = world
    rows = broker.agents(ADMIN, ADMIN_PW)
    return next(a for a in rows if a["id"] == machine.agent_id)


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


def test_the_hello_lists_both_outputs(world: tuple[Machine, Broker]) -> None:
    row = agent_row(world)
    assert row["screen"] == "wlroots", row
    width, height = SWAY_SIZE
    second_w, second_h = SECOND_SIZE
    assert [(m["name"], m["width"], m["height"], m["x"], m["y"]) for m in row["monitors"]] == [
        ("HEADLESS-1", width, height, 0, 0),
        ("HEADLESS-2", second_w, second_h, width, 0),
    ]


def test_the_second_output_alone(world: tuple[Machine, Broker], desk: Desk) -> None:
    machine, _ = world
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


def test_all_outputs_is_refused_before_the_pc_is_asked(
    world: tuple[Machine, Broker], desk: Desk
) -> None:
    machine, _ = world
    answer = desk.request(machine.agent_id, kind="screen", reason="all of them", monitor="all")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "monitor_unavailable"
    assert "one monitor at a time" in answer.json()["message"]
    assert not any(p["reason"] == "all of them" for p in machine.pending(USER))
