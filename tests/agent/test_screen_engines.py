"""Which screen engine a session gets, and view-only kept by the agent itself.

The engine rule is sans-I/O (``desktop.choose_engine``): tables of environments
and probes. The view-only filter is checked alone (every split of the stream)
and in front of a real program on the screen socketpair, which writes down
every byte that reaches it: with the broker out of the way, no key, pointer
or clipboard byte gets through.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

from allowhelp.agent.castlayout import single
from allowhelp.agent.desktop import (
    Probe,
    choose_engine,
    compositor,
    parse_version_reply,
    probe,
    session_type,
)
from allowhelp.agent.portalvnc import PortalInput, gstreamer_argv
from allowhelp.agent.rfbinput import RfbInputError, ViewOnlyFilter
from allowhelp.agent.rfbserver import RfbServer, StreamEnded, changed_rows
from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch
from allowhelp.agent.wayvnc import WayvncLaunch, runtime_folder, wayvnc_argv

ALL = Probe(
    frozenset({"x11vnc", "wayvnc", "gst-launch-1.0"}), {"ScreenCast": 4, "RemoteDesktop": 1}, True
)
NOTHING = Probe()
SWAY = {"WAYLAND_DISPLAY": "wayland-1", "XDG_SESSION_TYPE": "wayland", "SWAYSOCK": "/s"}
GNOME = {
    "WAYLAND_DISPLAY": "wayland-0",
    "XDG_SESSION_TYPE": "wayland",
    "XDG_CURRENT_DESKTOP": "GNOME",
}
KDE = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland", "XDG_CURRENT_DESKTOP": "KDE"}


@pytest.mark.parametrize(
    ("env", "found", "engine", "said"),
    [
        ({"DISPLAY": ":0"}, ALL, "x11", ""),
        ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11", "WAYLAND_DISPLAY": "w"}, ALL, "x11", ""),
        ({"DISPLAY": ":0"}, NOTHING, "none", "x11vnc is not installed"),
        ({}, ALL, "none", "no graphical session"),
        ({"XDG_SESSION_TYPE": "x11"}, ALL, "none", "without DISPLAY"),
        (SWAY, ALL, "wlroots", ""),
        ({**SWAY, "DISPLAY": ":1"}, ALL, "wlroots", ""),  # Xwayland's DISPLAY is not the session
        (SWAY, NOTHING, "none", "wayvnc is not installed"),
        ({"WAYLAND_DISPLAY": "w", "XDG_CURRENT_DESKTOP": "Hyprland"}, ALL, "wlroots", ""),
        ({"WAYLAND_DISPLAY": "w", "XDG_CURRENT_DESKTOP": "labwc:wlroots"}, ALL, "wlroots", ""),
        ({"WAYLAND_DISPLAY": "w", "XDG_CURRENT_DESKTOP": "river"}, ALL, "wlroots", ""),
        ({"XDG_SESSION_TYPE": "wayland"}, ALL, "none", "without WAYLAND_DISPLAY"),
        (GNOME, NOTHING, "none", "Wayland session without a screen-cast portal"),
        (GNOME, Probe(frozenset(), {"ScreenCast": 4}, True), "none", "GStreamer is not"),
        (GNOME, Probe(ALL.programs, {"ScreenCast": 4}), "none", "PyGObject is not available"),
        (GNOME, Probe(ALL.programs, {"ScreenCast": 4}, True), "portal", ""),
        (GNOME, ALL, "portal", ""),
        (KDE, ALL, "portal", ""),
    ],
)
def test_the_engine_for_each_session(
    env: dict[str, str], found: Probe, engine: str, said: str
) -> None:
    offer = choose_engine(env, found)
    assert offer.engine == engine
    assert said in offer.problem if said else offer.problem == ""
    assert offer.available is (engine != "none")


def test_what_the_console_is_shown() -> None:
    assert choose_engine(SWAY, Probe(frozenset({"wayvnc"}))).desktop == "wayland: sway"
    assert choose_engine(GNOME, ALL).desktop == (
        "wayland: gnome; portals RemoteDesktop 1, ScreenCast 4"
    )
    assert choose_engine({"DISPLAY": ":0"}, NOTHING).desktop == "x11"
    assert compositor({"XDG_CURRENT_DESKTOP": "ubuntu:GNOME"}) == "gnome"
    assert session_type({"WAYLAND_DISPLAY": "w"}) == "wayland"
    assert session_type({}) == ""


def test_portal_versions_are_read_from_dbus_send() -> None:
    assert parse_version_reply("   variant       uint32 4\n") == 4
    assert parse_version_reply("Error org.freedesktop.DBus.Error.ServiceUnknown") is None
    assert parse_version_reply("") is None


def test_the_probe_asks_no_bus_outside_a_portal_desktop() -> None:
    # No session bus here: a portal question would fail; an X11 session never asks one.
    found = probe({"DISPLAY": ":0", "PATH": "/usr/bin:/bin"})
    assert found.portals == {}
    assert "wayvnc" in found.programs and "x11vnc" in found.programs


def test_wayvnc_options() -> None:
    control = wayvnc_argv("/usr/bin/wayvnc", "/run/user/1/x/rfb.sock", view_only=False)
    viewer = wayvnc_argv("/usr/bin/wayvnc", "/run/user/1/x/rfb.sock", view_only=True, output="B")
    assert control == [
        "/usr/bin/wayvnc",
        "--config=/dev/null",
        "--unix-socket",
        "--render-cursor",
        "/run/user/1/x/rfb.sock",
    ]
    assert "--disable-input" in viewer and "--output=B" in viewer
    assert viewer[-1] == "/run/user/1/x/rfb.sock"


def test_the_runtime_folder_must_be_the_users_alone(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no XDG_RUNTIME_DIR"):
        runtime_folder({})
    tmp_path.chmod(0o755)
    with pytest.raises(RuntimeError, match="not private"):
        runtime_folder({"XDG_RUNTIME_DIR": str(tmp_path)})
    tmp_path.chmod(0o700)
    assert runtime_folder({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path
    with pytest.raises(RuntimeError, match="cannot be used"):
        runtime_folder({"XDG_RUNTIME_DIR": str(tmp_path / "absent")})


async def test_wayvnc_that_fails_says_so_and_leaves_no_folder(tmp_path: Path) -> None:
    """A real wayvnc with no compositor to talk to: it exits, and nothing is left."""
    tmp_path.chmod(0o700)
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "absent-0", "PATH": "/usr/bin"}
    launch = WayvncLaunch(env, view_only=False)
    with pytest.raises(RuntimeError, match="exited before it served"):
        await launch.connect()
    assert launch.proc.stderr is not None
    with launch.proc.stderr:
        stderr = launch.proc.stderr.read()
    assert launch.proc.wait() != 0
    assert b"wayland" in stderr.lower()
    launch.cleanup()
    assert list(tmp_path.iterdir()) == []


# --- view-only in the agent ---------------------------------------------------

HANDSHAKE = b"RFB 003.008\n" + b"\x01" + b"\x01"
LOOKS = [
    struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0),
    struct.pack(">BxHii", 2, 2, 0, -223),
    struct.pack(">BBHHHH", 3, 1, 0, 0, 100, 100),
    struct.pack(">BBHHHH", 150, 1, 0, 0, 100, 100),
    struct.pack(">BxxxIB", 248, 0, 4) + b"abcd",
]
INPUT = [
    struct.pack(">BBxxI", 4, 1, 0x61),
    struct.pack(">BBHH", 5, 1, 10, 10),
    struct.pack(">BxxxI", 6, 5) + b"hello",
    struct.pack(">BxxxI", 6, 2**32 - 4) + b"\0\0\0\1",  # extended clipboard: negative length
    struct.pack(">BxBB", 250, 1, 4),  # xvp: reboot
    struct.pack(">BxHHBx", 251, 800, 600, 1) + bytes(16),
    struct.pack(">BBHII", 255, 0, 1, 0x61, 30),
]


def interleaved() -> tuple[bytes, bytes]:
    """A stream of looks and input, and what must come out of it."""
    stream, kept = bytearray(HANDSHAKE), bytearray(HANDSHAKE)
    for look, act in zip(LOOKS * 2, INPUT, strict=False):
        stream += act + look
        kept += look
    return bytes(stream), bytes(kept)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_the_filter_drops_input_however_the_stream_is_split(chunk: int) -> None:
    stream, kept = interleaved()
    filter_ = ViewOnlyFilter()
    out = b"".join(filter_.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk))
    assert out == kept
    assert filter_.dropped == len(INPUT)


@pytest.mark.parametrize(
    ("stream", "said"),
    [
        (b"HTTP/1.1 200\n", "RFB 3.3, 3.7 or 3.8"),
        (b"RFB 003.008\n\x02", "security type other than None"),
        (HANDSHAKE + b"\x07", "unknown type 7"),
        (HANDSHAKE + b"\xff\x01", "QEMU message"),
        (HANDSHAKE + struct.pack(">BxxxIB", 248, 0, 200), "fence past the bound"),
        (HANDSHAKE + struct.pack(">BxxxI", 6, 2**31 - 1), "clipboard message past the bound"),
    ],
)
def test_the_filter_refuses_what_it_cannot_follow(stream: bytes, said: str) -> None:
    with pytest.raises(RfbInputError, match=said):
        ViewOnlyFilter().feed(stream)


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


RECORDER = """
import os, sys
with open(sys.argv[1], "ab") as f:
    while d := os.read(0, 65536):
        f.write(d)
        f.flush()
"""


@pytest.mark.parametrize("view_only", [False, True], ids=["control", "view-only"])
async def test_the_agent_alone_keeps_a_view_only_screen_view_only(
    tmp_path: Path, view_only: bool
) -> None:
    """A real program on the screen socketpair records what reaches it: under
    control everything does (so this can fail); view-only, no input byte does."""
    record = tmp_path / "received"
    stream, kept = interleaved()
    launch = PairLaunch([sys.executable, "-c", RECORDER, str(record)], {})
    screen = ScreenProcess(Collect(), launch, lambda s, e: None, view_only=view_only)
    try:
        screen.write(stream)
        want = stream if view_only is False else kept
        deadline = asyncio.get_running_loop().time() + 10
        while (record.read_bytes() if record.exists() else b"") != want:
            assert asyncio.get_running_loop().time() < deadline, "the bytes did not arrive"
            await asyncio.sleep(0.02)
    finally:
        screen.close()
    ended = screen.ended
    assert ended is not None
    await asyncio.wait_for(ended, 10)
    assert record.read_bytes() == (stream if not view_only else kept)


# --- the portal engine's RFB server, with a pipe of frames -------------------


def test_changed_rows() -> None:
    before = bytes(4 * 4 * 4)
    after = bytearray(before)
    after[1 * 16 + 4] = 9  # row 1
    after[2 * 16] = 9  # row 2
    assert changed_rows(before, before, 16) is None
    assert changed_rows(before, bytes(after), 16) == (1, 3)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed"
        data += chunk
    return data


def test_the_rfb_server_sends_the_band_that_changed_in_the_viewers_format() -> None:
    width, height = 4, 3
    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    server = RfbServer(theirs, width, height, name="t")
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve(read_end)
        except (ConnectionError, StreamEnded) as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert _recv(ours, 12) == b"RFB 003.008\n"
        ours.sendall(b"RFB 003.008\n")
        assert _recv(ours, 2) == b"\x01\x01"
        ours.sendall(b"\x01")
        assert _recv(ours, 4) == bytes(4)
        ours.sendall(b"\x01")
        init = _recv(ours, 24)
        assert struct.unpack_from(">HH", init) == (width, height)
        _recv(ours, struct.unpack_from(">I", init, 20)[0])
        # noVNC's format: red in the lowest byte (shift 0), blue at 16
        ours.sendall(struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 0, 8, 16))
        frame = bytes([10, 20, 30, 0]) * (width * height)  # BGRx: B=10 G=20 R=30
        os.write(write_end, frame)
        ours.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        head = _recv(ours, 4 + 12)
        assert struct.unpack_from(">HHHHi", head, 4) == (0, 0, width, height, 0)
        assert _recv(ours, width * height * 4)[:4] == bytes([30, 20, 10, 0])
        ours.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, width, height))
        ours.sendall(struct.pack(">BBxxI", 4, 1, 0x61))  # a key: read and dropped
        changed = bytearray(frame)
        changed[1 * width * 4 : 1 * width * 4 + 4] = bytes([1, 2, 3, 0])
        os.write(write_end, bytes(changed))
        head = _recv(ours, 4 + 12)
        assert struct.unpack_from(">HHHHi", head, 4) == (0, 1, width, 1, 0)
        assert _recv(ours, width * 4)[:4] == bytes([3, 2, 1, 0])
        os.close(write_end)
        write_end = -1
        thread.join(10)
        assert failures and isinstance(failures[0], StreamEnded)
    finally:
        if write_end >= 0:
            os.close(write_end)
        ours.close()
        thread.join(10)
        theirs.close()
        os.close(read_end)


def test_the_rfb_server_refuses_what_it_does_not_serve() -> None:
    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    server = RfbServer(theirs, 2, 2, name="t")
    rgb565 = struct.pack(">BxxxBBBBHHHBBBxxx", 0, 16, 16, 0, 1, 31, 63, 31, 11, 5, 0)
    ours.sendall(b"RFB 003.008\n\x01\x01" + rgb565)
    try:
        with pytest.raises(ConnectionError, match="32-bit true colour"):
            server.serve(read_end)
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()


class Recorder:
    """Pure logic under test: what PortalInput asks the portal for."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def key(self, keysym: int, down: bool) -> None:
        self.calls.append(("key", keysym, down))

    def move(self, node: int, x: int, y: int) -> None:
        self.calls.append(("move", node, x, y))

    def button(self, button: int, down: bool) -> None:
        self.calls.append(("button", button, down))

    def scroll(self, steps: int) -> None:
        self.calls.append(("scroll", steps))


def test_the_viewers_pointer_becomes_portal_input() -> None:
    cast = Recorder()
    sink = PortalInput(cast, single(36, 1024, 768))
    sink.pointer(1, 10, 20)  # left down
    sink.pointer(1, 11, 20)  # drag: no new button event
    sink.pointer(4, 11, 20)  # left up, right down
    sink.pointer(8, 11, 20)  # wheel up (right up)
    sink.pointer(0, 11, 20)
    sink.key(0x61, True)
    assert cast.calls == [
        ("move", 36, 10, 20),
        ("button", 0x110, True),
        ("move", 36, 11, 20),
        ("move", 36, 11, 20),
        ("button", 0x110, False),
        ("button", 0x111, True),
        ("move", 36, 11, 20),
        ("button", 0x111, False),
        ("scroll", -1),
        ("move", 36, 11, 20),
        ("key", 0x61, True),
    ]


def test_gstreamer_reads_the_portals_stream_as_whole_bgrx_frames() -> None:
    argv = gstreamer_argv(7, [(36, 1024, 768, 9)])
    assert argv[:3] == ["gst-launch-1.0", "-q", "pipewiresrc"]
    assert {"fd=7", "path=36", "fd=9"} <= set(argv)
    assert "video/x-raw,format=BGRx,width=1024,height=768" in argv
