"""All the monitors of a GNOME Wayland desktop at once, for real (#15).

A headless GNOME with two monitors (``gnomekit``: mutter ``--virtual-monitor
1024x768 --virtual-monitor 800x600``, which mutter lays out left to right:
Meta-0 at 0,0 and Meta-1 at 1024,0) as a local user; the machine service as
root and the user's session helper in that session; the real broker. The
technician asks for ``all``; GNOME's dialog (answered by the test with keys
through mutter's own RemoteDesktop API) lets the user pick both monitors; the
portal engine composes the two PipeWire streams into one 1824x768 picture.

What is shown: the hello lists both monitors and a request naming one is still
refused (the person picks in the dialog); view-only, the picture has the
combined size, is not blank, the part right of Meta-0 under Meta-1 is black
(nothing there on the desktop), a window opened while the technician's
pointer is on Meta-1 still opens on Meta-0 (the pointer was dropped in the
agent), nothing listens on TCP and both processes are gone after; control, the
technician's pointer moved to a point of Meta-1 puts the pointer there (a
window opened then opens on Meta-1, where mutter places new windows: the
pointer's monitor) and the new window shows in Meta-1's part of the picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from desktopworld import (
    World,
    desk_fixture,
    desktop_marks,
    portal_engine_pids,
    through_dialog,
    world_fixture,
)
from gnomekit import CAN_RUN_GNOME, WHY_NO_GNOME, GnomeDesktop, gnome_desktop

from browserkit import ARTIFACTS, console_signed_in
from harness import TECH, TECH_PW, Desk, wait_for
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

USER = "ahmonitorsgn"
MONITORS = ((1024, 768), (800, 600))
PICTURE = (1824, 768)
SECOND = (1024, 0, 800, 600)  # Meta-1's place in the picture: x, y, width, height
MAGENTA = "ff00ff"
RETURN = 0xFF0D
Rect = tuple[int, int, int, int, bytes]

pytestmark = desktop_marks(CAN_RUN_GNOME, WHY_NO_GNOME)


Gnome = World[GnomeDesktop]

world = world_fixture(USER, lambda user: gnome_desktop(user, MONITORS), "gnome-monitors")
desk = desk_fixture()


def consented_to_all(world: Gnome, desk: Desk, *, view_only: bool) -> str:
    return world.consented(desk, view_only=view_only, reason="both", monitor="all")


async def picture(client: RfbClient, init: ServerInit) -> list[Rect]:
    await client.request_raw(init)
    return await client.framebuffer_update(init)


def pixels_in(rects: list[Rect], init: ServerInit, box: tuple[int, int, int, int]) -> bytes:
    """The pixels of ``box`` (x, y, width, height) of a whole-picture update, row by row."""
    (left, top, width, _, pixels), *_ = rects
    assert (left, top, width) == (0, 0, init.width), "not a whole picture"
    x, y, w, h = box
    size = init.bpp // 8
    rows = (
        pixels[((y + r) * width + x) * size : ((y + r) * width + x + w) * size] for r in range(h)
    )
    return b"".join(rows)


def magenta_where(rects: list[Rect], init: ServerInit) -> tuple[int, int, int, int] | None:
    """The bounding box of the magenta pixels (a magenta window's body), None if none."""
    (_, _, width, _, pixels), *_ = rects
    size = init.bpp // 8
    value = sum(255 << shift for shift in (init.shifts[0], init.shifts[2]))
    mask = sum(255 << shift for shift in init.shifts)
    order: Literal["big", "little"] = "big" if init.big_endian else "little"
    found = [
        (at // size % width, at // size // width)
        for at in range(0, len(pixels), size)
        if int.from_bytes(pixels[at : at + size], order) & mask == value
    ]
    if len(found) < 1000:  # a window's body, not a stray pixel
        return None
    xs, ys = [x for x, _ in found], [y for _, y in found]
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


@contextlib.contextmanager
def magenta_window(gnome: GnomeDesktop) -> Iterator[None]:
    """A foot window of one colour (text and cursor too), opened by the user now."""
    colours = [f"colors.{c}={MAGENTA}" for c in ("background", "foreground")]
    options = [arg for c in [*colours, f"colors.cursor={MAGENTA} {MAGENTA}"] for arg in ("-o", c)]
    window = gnome.start("foot", *options, "sleep", "600")
    try:
        yield
    finally:
        window.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            window.wait(10)


async def magenta_seen(client: RfbClient, init: ServerInit) -> tuple[int, int, int, int]:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        box = magenta_where(await picture(client, init), init)
        if box is not None:
            await asyncio.sleep(0.5)  # the window may still be growing to its size
            box = magenta_where(await picture(client, init), init)
            if box is not None:
                return box
        assert asyncio.get_running_loop().time() < deadline, "the magenta window never showed"
        await asyncio.sleep(0.2)


async def no_magenta(client: RfbClient, init: ServerInit) -> None:
    """No magenta window in the picture: the one an earlier test closed may still be
    going from mutter's frames on a loaded machine (seen once: its first picture)."""
    deadline = asyncio.get_running_loop().time() + 15
    while magenta_where(await picture(client, init), init) is not None:
        assert asyncio.get_running_loop().time() < deadline, "a magenta window before ours"
        await asyncio.sleep(0.2)


def save_png(rects: list[Rect], init: ServerInit, name: str) -> None:
    """The whole-picture update as a PNG in test-artifacts/, for a person to look at."""
    (_, _, width, height, pixels), *_ = rects
    size = init.bpp // 8
    rgb = bytearray()
    for row in range(height):
        rgb.append(0)  # no filter
        for at in range(row * width * size, (row + 1) * width * size, size):
            value = int.from_bytes(pixels[at : at + size], "big" if init.big_endian else "little")
            rgb += bytes((value >> shift) & 255 for shift in init.shifts)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rgb))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_bytes(png + chunk(b"IEND", b""))


def on_second(box: tuple[int, int, int, int]) -> bool:
    x, y, w, h = SECOND
    return x <= box[0] and box[2] <= x + w and y <= box[1] and box[3] <= y + h


def test_the_hello_lists_both_monitors_and_a_pick_is_still_refused(
    world: Gnome, desk: Desk
) -> None:
    monitors = world.agent_row()["monitors"]
    assert [(m["name"], m["width"], m["height"], m["x"], m["y"]) for m in monitors] == [
        ("Meta-0", 1024, 768, 0, 0),
        ("Meta-1", 800, 600, 1024, 0),
    ]
    answer = desk.request(world.machine.agent_id, kind="screen", reason="one", monitor="Meta-1")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "monitor_unavailable"
    assert "screen-sharing dialog" in answer.json()["message"]


@pytest.mark.browser
def test_the_console_offers_the_dialogs_pick_or_all(world: Gnome, desk: Desk) -> None:
    """Screen… for GNOME with two monitors: "Picked at the PC" (no monitor sent) or
    "All monitors", never one by name (the person picks in GNOME's dialog)."""
    with console_signed_in(world.broker, TECH, TECH_PW) as page:
        row = page.locator(f'#machines-rows tr[data-agent="{world.machine.agent_id}"]')
        row.locator("button[data-screen='portal']").click()
        picker = page.locator("#request-monitor")
        picker.wait_for()
        assert picker.locator("option").all_inner_texts() == [
            "Picked at the PC",
            "All monitors",
        ]
        assert picker.input_value() == ""
        assert "desktop's own dialog" in page.locator("#request-monitor-note").inner_text()
        picker.select_option("all")
        page.fill("#request-form textarea[name=reason]", "all from the console")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screen-gnome-monitor-picker.png"))
        page.click("#request-send")
        page.locator("#request-sent").wait_for()
    sessions = desk.client.get("/api/v1/sessions").json()
    session = next(s for s in sessions if s["reason"] == "all from the console")
    desk.client.post(f"/api/v1/sessions/{session['id']}/end")
    records = world.audit_of(session["id"])
    requested = next(r for r in records if r["type"] == "session.requested")
    assert requested["details"]["monitor"] == "all"


def test_all_monitors_view_only_is_one_picture_and_input_is_dropped(
    world: Gnome, desk: Desk
) -> None:
    marker = Path(f"/home/{USER}/typed-under-view-only")
    marker.unlink(missing_ok=True)
    session_id = consented_to_all(world, desk, view_only=True)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            await through_dialog(client, world.desktop, "share-all")
            init = await client.handshake()
            assert (init.width, init.height) == PICTURE
            rects = await picture(client, init)
            first = pixels_in(rects, init, (0, 0, 1024, 768))
            assert variance(first, init.bpp) > 2, "Meta-0 (foot on it) is blank"
            below_second = pixels_in(rects, init, (1024, 600, 800, 168))
            assert below_second == bytes(len(below_second)), "no desktop under Meta-1"
            pids = portal_engine_pids(USER)
            assert len(pids) == 2, pids
            engine = [pid for pid in processes("--all-monitors", "python3") if pid in pids]
            assert engine, "the engine was not asked for all"
            listening = listening_inodes()
            for pid in pids:
                assert not socket_inodes(pid) & listening, f"pid {pid} listens on TCP"
            # input the agent must drop: the pointer to Meta-1, keys typed into foot
            await client.send(pointer_event(0, 1024 + 400, 300))
            for char in f"\ncd\ntouch {marker.name}\n":
                keysym = RETURN if char == "\n" else ord(char)
                await client.send(key_event(keysym, True) + key_event(keysym, False))
            with magenta_window(world.desktop):
                box = await magenta_seen(client, init)
                assert box[2] <= 1024, f"the pointer reached Meta-1: a new window at {box}"
            ended = await asyncio.to_thread(world.machine.cli, USER, "end", session_id)
            assert ended.returncode == 0, ended.stderr
            return pids

    pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["end_reason"] == "user"
    wait_for(lambda: gone(pids), 15, "the portal engine and GStreamer to be gone")
    assert not marker.exists(), "a key typed under a view-only grant reached the desktop"


def test_the_technicians_pointer_lands_on_the_second_monitor(world: Gnome, desk: Desk) -> None:
    session_id = consented_to_all(world, desk, view_only=False)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            await through_dialog(client, world.desktop, "control-all")
            init = await client.handshake()
            assert (init.width, init.height) == PICTURE
            await no_magenta(client, init)
            pids = portal_engine_pids(USER)
            await client.send(pointer_event(0, 1024 + 400, 300))
            # an update after the move: the engine has passed it on by then
            await picture(client, init)
            with magenta_window(world.desktop):
                box = await magenta_seen(client, init)
                save_png(await picture(client, init), init, "screen-gnome-all-monitors.png")
                assert on_second(box), f"the new window is not on Meta-1: {box}"
            return pids

    pids = asyncio.run(scenario())  # the technician leaves
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 15, "the portal engine and GStreamer to be gone")
    assert not portal_engine_pids(USER)


def test_the_person_may_share_fewer_monitors_than_asked(world: Gnome, desk: Desk) -> None:
    """The technician asked for all; the person ticks one in GNOME's dialog: the
    picture is that monitor alone (the dialog is the consent, not the request)."""
    session_id = consented_to_all(world, desk, view_only=True)

    async def scenario() -> tuple[int, int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            await through_dialog(client, world.desktop, "share-first")
            init = await client.handshake()
            await picture(client, init)
            return init.width, init.height

    assert asyncio.run(scenario()) == MONITORS[0]
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
