"""The screen of a wlroots Wayland desktop, for real: sway headless + foot, wayvnc.

A local user is made here (``useradd``); sway runs as that user (it refuses
root) on the headless backend, foot (bash) its only window. The machine service
runs as root and the user's session helper in the sway session's environment,
as a display manager would start it. The technician reaches the screen through
the real broker's screen WebSocket with a Python RFB client: the picture is the
desktop's size and not blank, keys typed there run a command in foot, a
view-only grant refuses them, the user ends the session from the PC, wayvnc is
gone after, and nothing listens on TCP at any moment.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import websockets
from desktopworld import World, desk_fixture, desktop_marks, owner_of, world_fixture
from waylandkit import CAN_RUN_SWAY, SWAY_SIZE, WHY_NO_SWAY, SwayDesktop, sway_desktop

from browserkit import ARTIFACTS, console_signed_in
from harness import TECH, TECH_PW, Desk, wait_for
from screenkit import (
    RfbClient,
    ServerInit,
    gone,
    key_event,
    listening_inodes,
    processes,
    screen_socket,
    socket_inodes,
    variance,
)

USER = "ahwayland"
RETURN = 0xFF0D

pytestmark = desktop_marks(CAN_RUN_SWAY, WHY_NO_SWAY)


Sway = World[SwayDesktop]

world = world_fixture(USER, sway_desktop, "wayland")
desk = desk_fixture()


def consented(world: Sway, desk: Desk, *, view_only: bool = False) -> str:
    return world.consented(desk, view_only=view_only, reason="wayland test")


def wayvnc_pids(world: Sway) -> list[int]:
    found: list[int] = wait_for(lambda: processes("--unix-socket", "wayvnc"), 15, "wayvnc to run")
    return found


def nothing_listens(pids: list[int]) -> None:
    listening = listening_inodes()
    for pid in pids:
        assert not socket_inodes(pid) & listening, f"pid {pid} listens on TCP"


async def type_text(client: RfbClient, text: str) -> None:
    for char in text:
        keysym = RETURN if char == "\n" else ord(char)
        await client.send(key_event(keysym, True) + key_event(keysym, False))


async def picture(client: RfbClient, init: ServerInit) -> bytes:
    await client.request_raw(init)
    rects = await client.framebuffer_update(init)
    assert sum(w * h for _, _, w, h, _ in rects) == init.width * init.height
    return b"".join(pixels for *_, pixels in rects)


async def not_blank(client: RfbClient, init: ServerInit, timeout: float = 15) -> bytes:
    """A whole picture with something on it: foot's first paint may come after wayvnc's."""
    deadline = asyncio.get_running_loop().time() + timeout
    while variance(pixels := await picture(client, init), init.bpp) <= 2:
        assert asyncio.get_running_loop().time() < deadline, "only blank pictures"
    return pixels


def home_file(name: str) -> Path:
    return Path(f"/home/{USER}") / name


def test_the_console_is_told_what_the_session_offers(world: Sway) -> None:
    row = world.agent_row()
    assert row["screen"] == "wlroots", row
    assert row["desktop"] == "wayland: sway"
    assert row["screen_problem"] == ""


def test_keys_typed_by_the_technician_run_in_foot(world: Sway, desk: Desk) -> None:
    marker = home_file("typed-by-technician")
    marker.unlink(missing_ok=True)
    session_id = consented(world, desk)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            assert (init.width, init.height) == SWAY_SIZE
            await not_blank(client, init)
            pids = wayvnc_pids(world)
            assert len(pids) == 1 and owner_of(pids[0]) == os.stat(f"/home/{USER}").st_uid
            assert "--disable-input" not in Path(f"/proc/{pids[0]}/cmdline").read_text()
            nothing_listens(pids)
            await type_text(client, f"cd\ntouch {marker.name}\n")
            await asyncio.to_thread(wait_for, marker.exists, 15, "the typed command to run")
            nothing_listens(pids)
            return pids

    pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
    wait_for(lambda: gone(pids), 15, "wayvnc to be gone after the technician left")
    assert not list(world.desktop.runtime.glob("allowhelp-screen-*")), "the private folder is left"


def test_view_only_refuses_keys_and_the_user_ends_it_from_the_pc(world: Sway, desk: Desk) -> None:
    marker = home_file("typed-while-view-only")
    marker.unlink(missing_ok=True)
    session_id = consented(world, desk, view_only=True)

    async def scenario() -> list[int]:
        async with screen_socket(desk, session_id) as ws:
            client = RfbClient(ws)
            init = await client.handshake()
            await not_blank(client, init)
            pids = wayvnc_pids(world)
            assert "--disable-input" in Path(f"/proc/{pids[0]}/cmdline").read_text()
            await type_text(client, f"cd\ntouch {marker.name}\n")
            # Input and update requests are handled in stream order: once a picture
            # asked for after the keys has come, the keys were had (or dropped).
            await picture(client, init)
            nothing_listens(pids)
            ended = await asyncio.to_thread(world.machine.cli, USER, "end", session_id)
            assert ended.returncode == 0, ended.stderr
            return pids

    pids = asyncio.run(scenario())
    assert desk.wait_state(session_id, "ended")["end_reason"] == "user"
    wait_for(lambda: gone(pids), 15, "wayvnc to be gone after the user ended it")
    assert not marker.exists(), "a key typed under a view-only grant ran a command"
    assert not list(world.desktop.runtime.glob("allowhelp-screen-*"))


def test_a_failure_after_consent_is_said(world: Sway, desk: Desk) -> None:
    """wayvnc cannot get its private folder (the runtime folder is not writable for a
    moment): the technician's screen closes with the reason, audited as session.failed."""
    runtime = world.desktop.runtime
    session_id = consented(world, desk)

    async def scenario() -> websockets.ConnectionClosed:
        async with screen_socket(desk, session_id) as ws:
            with pytest.raises(websockets.ConnectionClosed) as caught:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            return caught.value

    os.chmod(runtime, 0o500)
    try:
        closed = asyncio.run(scenario())
    finally:
        os.chmod(runtime, 0o700)
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert "could not start" in closed.rcvd.reason and "Permission denied" in closed.rcvd.reason
    assert desk.wait_state(session_id, "ended")["end_reason"] == "error"
    failed = [r for r in world.audit_of(session_id) if r["type"] == "session.failed"]
    assert failed and "Permission denied" in failed[-1]["details"]["error"]


@pytest.mark.browser
def test_the_console_offers_the_screen_only_where_it_can_work(world: Sway) -> None:
    """Screen… is on for the sway session, and off with the reason once nobody is
    signed in; live, without a reload."""
    try:
        with console_signed_in(world.broker, TECH, TECH_PW) as page:
            row = page.locator(f'#machines-rows tr[data-agent="{world.machine.agent_id}"]')
            screen = row.locator("button:has-text('Screen')")
            row.locator("button[data-screen='wlroots']").wait_for()
            assert screen.is_enabled()
            assert screen.get_attribute("title") == "Screen of the wayland: sway session"
            world.machine.stop_helper(USER)
            row.locator("button[data-screen='none']").wait_for()
            assert screen.is_disabled()
            assert screen.get_attribute("title") == "No screen: nobody signed in"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "screen-nobody-signed-in.png"))
    finally:
        if USER not in world.machine.helpers:
            world.machine.start_helper(USER, env=world.desktop.session_env())
