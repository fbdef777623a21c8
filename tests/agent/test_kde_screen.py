"""The screen of a KDE Plasma Wayland desktop, for real: headless KWin, KDE's portals.

KDE's packages come with ``scripts/install test`` (about 740 MB); ``ALLOWHELP_KDE=0``
skips the suite.

A local user is made here; a headless KWin (``kwin_wayland --virtual``,
1024x768) runs as that user in its own D-Bus session (``kdekit``) with
pipewire, wireplumber and xdg-desktop-portal with its KDE back end. The machine
service runs as root and the user's session helper in that session.

- the hello says KDE, KWin's version and the portals' versions;
- view-only: after "Allow help", KDE's own screen chooser asks the user again;
  the test answers it (``kde_dialog.py``, test-only), and the technician gets
  the engine's RFB greeting with the monitor's size, made as the user with
  nothing listening on TCP; keys typed there reach nothing; the user ends it
  from the PC and the engine and GStreamer are gone after;
- a user who cancels KDE's dialog is heard;
- control: Plasma 5.27 asks nothing more of an unsandboxed application (a
  notification only), and keys typed by the technician reach the application
  with the focus; the technician leaves and the processes are gone; the
  technician's pointer moves KWin's to where it points and a click lands.

Not covered, because KWin 5.27's virtual backend cannot give it (docs/wayland.md,
"KDE Plasma"): a picture. Its outputs never report damage, so a monitor's
stream is negotiated (BGRA 1024x768) and never gets a frame. (A pointer moved
while a view-only stream with an embedded cursor runs even crashes that KWin,
SIGSEGV in ``GLFramebuffer::blitFromFramebuffer``; control streams carry the
cursor as metadata and are not touched.)
"""

from __future__ import annotations

import asyncio

import pytest
from desktopworld import (
    World,
    closed_after_dialog,
    desk_fixture,
    desktop_marks,
    portal_engine_pids,
    through_dialog,
    world_fixture,
)
from kdekit import (
    CAN_RUN_KDE,
    KDE_SIZE,
    OPTED_IN,
    WHY_NO_KDE,
    WHY_NOT_OPTED_IN,
    KdeDesktop,
    kde_desktop,
)

from harness import Desk, wait_for
from screenkit import (
    RfbClient,
    command_line,
    gone,
    key_event,
    listening_inodes,
    pointer_event,
    screen_socket,
    socket_inodes,
)

USER = "ahkde"
RETURN = 0xFF0D

pytestmark = [
    pytest.mark.skipif(not OPTED_IN, reason=WHY_NOT_OPTED_IN),
    *desktop_marks(CAN_RUN_KDE, WHY_NO_KDE),
]


Kde = World[KdeDesktop]
# KDE's dialog: the next press 10 s after one that found it (under load it may show
# before it takes the keys), 1 s after one that did not (not there yet).
DIALOG = {"again": 10, "not_yet": 1, "patience": 60}

world = world_fixture(USER, kde_desktop, "kde")
desk = desk_fixture()


def consented(world: Kde, desk: Desk, *, view_only: bool) -> str:
    return world.consented(desk, view_only=view_only, reason="kde test")


def test_the_console_is_told_it_is_kde_with_kwins_and_the_portals_versions(world: Kde) -> None:
    row = world.agent_row()
    assert row["screen"] == "portal", row
    assert row["desktop"].startswith("wayland: kde (KWin 5."), row
    assert row["desktop"].endswith("; portals RemoteDesktop 1, ScreenCast 4"), row
    assert row["monitors"] == []  # the user picks the monitor in KDE's dialog


def test_view_only_screen_through_kdes_dialog(world: Kde, desk: Desk) -> None:
    with world.desktop.entry("viewonly") as typed:
        session_id = consented(world, desk, view_only=True)

        async def scenario() -> list[int]:
            async with screen_socket(desk, session_id) as ws:
                client = RfbClient(ws)
                assert (
                    await through_dialog(client, world.desktop, "share", **DIALOG)
                    == b"RFB 003.008\n"
                )
                init = await client.handshake()
                assert (init.width, init.height) == KDE_SIZE
                pids = portal_engine_pids(USER)
                assert len(pids) == 2, pids
                listening = listening_inodes()
                for pid in pids:
                    assert not socket_inodes(pid) & listening, f"pid {pid} listens on TCP"
                for char in "leaked\n":
                    keysym = RETURN if char == "\n" else ord(char)
                    await client.send(key_event(keysym, True) + key_event(keysym, False))
                ended = await asyncio.to_thread(world.machine.cli, USER, "end", session_id)
                assert ended.returncode == 0, ended.stderr
                return pids

        pids = asyncio.run(scenario())
        assert desk.wait_state(session_id, "ended")["end_reason"] == "user"
        wait_for(lambda: gone(pids), 15, "the portal engine and GStreamer to be gone")
        assert world.desktop.window("zenity") is not None, "a key typed under view-only closed it"
        assert typed.read_text() == "", "a key typed under a view-only grant reached the desktop"


def test_a_user_who_cancels_kdes_dialog_is_heard(world: Kde, desk: Desk) -> None:
    session_id = consented(world, desk, view_only=True)

    shut = asyncio.run(closed_after_dialog(desk, session_id, world.desktop, "decline", **DIALOG))
    assert shut.rcvd is not None and shut.rcvd.code == 1011
    assert "declined the desktop's screen-sharing dialog" in shut.rcvd.reason
    assert desk.wait_state(session_id, "ended")["end_reason"] == "error"
    failed = [r for r in world.audit_of(session_id) if r["type"] == "session.failed"]
    assert failed and "declined" in failed[-1]["details"]["error"]
    wait_for(lambda: not portal_engine_pids(USER), 15, "the portal engine to be gone")


def test_keys_typed_by_the_technician_reach_the_kde_application(world: Kde, desk: Desk) -> None:
    with world.desktop.entry("control") as typed:
        session_id = consented(world, desk, view_only=False)

        async def scenario() -> list[int]:
            async with screen_socket(desk, session_id) as ws:
                client = RfbClient(ws)
                # no dialog to answer: Plasma 5.27 only notifies for unsandboxed apps
                assert await client.read(12, timeout=90) == b"RFB 003.008\n"
                client.buf[:0] = b"RFB 003.008\n"
                init = await client.handshake()
                assert (init.width, init.height) == KDE_SIZE
                pids = portal_engine_pids(USER)
                assert len(pids) == 2, pids
                assert any("--control" in command_line(pid) for pid in pids), "not --control"
                for char in "hello kde\n":
                    keysym = RETURN if char == "\n" else ord(char)
                    await client.send(key_event(keysym, True) + key_event(keysym, False))
                for _ in range(150):  # up to 15 s for zenity to say what was typed
                    if typed.read_text().strip():
                        return pids
                    await asyncio.sleep(0.1)
                raise AssertionError("no key typed by the technician reached zenity")

        pids = asyncio.run(scenario())  # the technician leaves
        assert typed.read_text().strip() == "hello kde"
        assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
        wait_for(lambda: gone(pids), 15, "the portal engine and GStreamer to be gone")


def test_the_technicians_pointer_moves_kwins_and_clicks_in_the_application(
    world: Kde, desk: Desk
) -> None:
    """A control grant: the viewer's pointer goes to KWin through the RemoteDesktop
    portal at the position the technician points at, and a click lands: zenity's
    OK button (the right-most one, at the bottom right of its window) says the text."""
    with world.desktop.entry("pointer") as typed:
        window = world.desktop.window("zenity")
        assert window is not None
        x, y, width, height = window
        session_id = consented(world, desk, view_only=False)

        async def scenario() -> None:
            async with screen_socket(desk, session_id) as ws:
                client = RfbClient(ws)
                assert await client.read(12, timeout=90) == b"RFB 003.008\n"
                client.buf[:0] = b"RFB 003.008\n"
                await client.handshake()
                for char in "clicked":
                    await client.send(key_event(ord(char), True) + key_event(ord(char), False))
                await client.send(pointer_event(0, 100, 50))
                await asyncio.to_thread(
                    wait_for, lambda: world.desktop.cursor() == (100, 50), 15, "KWin's pointer"
                )
                ok = (x + width - 24, y + height - 24)
                await client.send(pointer_event(0, *ok) + pointer_event(1, *ok))
                await client.send(pointer_event(0, *ok))
                await asyncio.to_thread(
                    wait_for, lambda: typed.read_text().strip() != "", 15, "zenity's answer"
                )

        asyncio.run(scenario())
        assert typed.read_text().strip() == "clicked", world.desktop.log("kwin.log")
