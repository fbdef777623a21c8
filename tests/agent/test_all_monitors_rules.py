"""All monitors through the portal engine, the pure parts: the layout of the streams,
the pointer mapped back to a stream, the RFB server composing pipes into one picture,
and mutter's monitors parsed (the real GNOME run: test_gnome_monitors_screen.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allowhelp.agent.castlayout import LayoutError, Stream, Tile, layout, single
from allowhelp.agent.monitors import parse_mutter_state
from allowhelp.agent.portalvnc import PortalInput, gstreamer_argv
from allowhelp.agent.rfbcanvas import MAX_RECTS, Canvas
from allowhelp.agent.rfbserver import Piece, RfbServer, StreamEnded
from allowhelp.agent.rfbupstream import Upstream, UpstreamError
from allowhelp.agent.wayvnc import wayvnc_environment
from allowhelp.agent.wayvncall import RelayInput
from allowhelp.protocol.monitors import Monitor

ROOT = str(Path(__file__).resolve().parents[2])
# What mutter 43 answered (busctl --json=short) for two --virtual-monitor arguments.
MUTTER_TWO = {
    "type": "ua((ssss)a(siiddada{sv})a{sv})a(iiduba(ssss)a{sv})a{sv}",
    "data": [
        2,
        [
            [
                ["Meta-0", "MetaVendor", "MetaVirtualMonitor", "0x00"],
                [
                    [
                        "1024x768@60.000",
                        1024,
                        768,
                        60.0,
                        1.0,
                        [1.0],
                        {"is-current": {"type": "b", "data": True}},
                    ]
                ],
                {},
            ],
            [
                ["Meta-1", "MetaVendor", "MetaVirtualMonitor", "0x01"],
                [
                    ["640x480@60.000", 640, 480, 60.0, 1.0, [1.0], {}],
                    [
                        "800x600@60.000",
                        800,
                        600,
                        60.0,
                        1.0,
                        [1.0],
                        {"is-current": {"type": "b", "data": True}},
                    ],
                ],
                {},
            ],
        ],
        [
            [0, 0, 1.0, 0, True, [["Meta-0", "MetaVendor", "MetaVirtualMonitor", "0x00"]], {}],
            [1024, 0, 1.0, 0, False, [["Meta-1", "MetaVendor", "MetaVirtualMonitor", "0x01"]], {}],
        ],
        {"layout-mode": {"type": "u", "data": 2}},
    ],
}


def test_streams_are_placed_as_the_desktop_lays_them_out() -> None:
    # as GNOME gave them: the second monitor's stream first
    picture = layout([Stream(39, 800, 600, (1024, 0)), Stream(37, 1024, 768, (0, 0))])
    assert (picture.width, picture.height) == (1824, 768)
    assert picture.tiles == (Tile(39, 1024, 0, 800, 600), Tile(37, 0, 0, 1024, 768))
    # a monitor left of and above the primary one: the picture starts at its edge
    picture = layout([Stream(1, 1920, 1080, (0, 0)), Stream(2, 1280, 1024, (-1280, -200))])
    assert (picture.width, picture.height) == (3200, 1280)
    assert picture.tiles == (Tile(1, 1280, 200, 1920, 1080), Tile(2, 0, 0, 1280, 1024))


def test_streams_without_a_usable_place_go_side_by_side() -> None:
    without = layout([Stream(1, 100, 50), Stream(2, 60, 80, (0, 0))])
    overlapping = layout([Stream(1, 100, 50, (0, 0)), Stream(2, 60, 80, (50, 10))])
    for picture in (without, overlapping):
        assert (picture.width, picture.height) == (160, 80)
        assert picture.tiles == (Tile(1, 0, 0, 100, 50), Tile(2, 100, 0, 60, 80))


@pytest.mark.parametrize(
    ("streams", "says"),
    [
        ([], "no stream"),
        ([Stream(1, 0, 768)], "usable size"),
        ([Stream(1, 20000, 768)], "usable size"),
        ([Stream(1, 1000, 1000, (0, 0)), Stream(2, 1000, 1000, (16000, 0))], "more than"),
        ([Stream(i, 16000, 16000, (0, 16000 * i)) for i in range(2)], "more than"),
    ],
)
def test_a_picture_that_cannot_be_made_is_refused(streams: list[Stream], says: str) -> None:
    with pytest.raises(LayoutError, match=says):
        layout(streams)


class Recorder:
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


def test_the_pointer_goes_to_the_monitor_under_it_at_its_own_point() -> None:
    cast = Recorder()
    picture = layout([Stream(39, 800, 600, (1024, 0)), Stream(37, 1024, 768, (0, 0))])
    sink = PortalInput(cast, picture)
    sink.pointer(0, 1424, 300)  # on the second monitor
    sink.pointer(0, 1023, 767)  # the first monitor's last pixel
    sink.pointer(1, 1500, 700)  # under the second monitor: no such place, the button counts
    sink.pointer(0, 1024, 0)
    assert cast.calls == [
        ("move", 39, 400, 300),
        ("move", 37, 1023, 767),
        ("button", 0x110, True),
        ("move", 39, 0, 0),
        ("button", 0x110, False),
    ]
    assert single(36, 10, 10).at(9, 9) == (Tile(36, 0, 0, 10, 10), 9, 9)
    assert single(36, 10, 10).at(10, 9) is None


def test_one_gstreamer_reads_every_stream_into_its_own_pipe() -> None:
    argv = gstreamer_argv(7, [(39, 800, 600, 10), (37, 1024, 768, 12)])
    assert argv.count("pipewiresrc") == 2 and argv.count("fd=7") == 2
    first, second = argv.index("path=39"), argv.index("path=37")
    assert argv.index("fd=10") in range(first, second) and argv.index("fd=12") > second
    assert "video/x-raw,format=BGRx,width=800,height=600" in argv[first:second]
    assert "video/x-raw,format=BGRx,width=1024,height=768" in argv[second:]


def test_mutters_monitors_are_read_in_its_layout() -> None:
    assert parse_mutter_state(json.dumps(MUTTER_TWO)) == (
        Monitor("Meta-0", 1024, 768, 0, 0, primary=True),
        Monitor("Meta-1", 800, 600, 1024, 0),
    )
    scaled = json.loads(json.dumps(MUTTER_TWO))
    scaled["data"][3]["layout-mode"]["data"] = 1  # logical: sizes divided by the scale
    scaled["data"][2][0][2] = 2.0
    scaled["data"][2][1][3] = 1  # turned 90 degrees
    assert parse_mutter_state(json.dumps(scaled)) == (
        Monitor("Meta-0", 512, 384, 0, 0, primary=True),
        Monitor("Meta-1", 600, 800, 1024, 0),
    )
    for text in ("", "not json", "{}", '{"data": [1, 2]}', '{"data": [1, [], [[0]], {}]}'):
        assert parse_mutter_state(text) == ()


# --- the RFB server composing two pipes


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed"
        data += chunk
    return data


class Served:
    """An RfbServer in a thread with two pieces: 2x2 at (0, 0), 1x1 at (2, 0) of 3x2."""

    def __init__(self) -> None:
        self.ours, theirs = socket.socketpair()
        self.pipes = [os.pipe(), os.pipe()]
        self.server = RfbServer(theirs, 3, 2, name="t")
        self.failures: list[BaseException] = []
        pieces = [Piece(self.pipes[0][0], 0, 0, 2, 2), Piece(self.pipes[1][0], 2, 0, 1, 1)]
        self.thread = threading.Thread(target=self._serve, args=(pieces, theirs), daemon=True)
        self.thread.start()
        assert _recv(self.ours, 12) == b"RFB 003.008\n"
        self.ours.sendall(b"RFB 003.008\n")
        assert _recv(self.ours, 2) == b"\x01\x01"
        self.ours.sendall(b"\x01")
        assert _recv(self.ours, 4) == bytes(4)
        self.ours.sendall(b"\x01")
        init = _recv(self.ours, 24)
        assert struct.unpack_from(">HH", init) == (3, 2)
        _recv(self.ours, struct.unpack_from(">I", init, 20)[0])

    def _serve(self, pieces: list[Piece], theirs: socket.socket) -> None:
        try:
            self.server.serve(pieces)
        except (ConnectionError, StreamEnded) as exc:
            self.failures.append(exc)
        finally:
            theirs.close()

    def frame(self, index: int, pixels: bytes) -> None:
        os.write(self.pipes[index][1], pixels)

    def ask(self, incremental: bool) -> tuple[tuple[int, int, int, int], bytes]:
        self.ours.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0, 3, 2))
        head = _recv(self.ours, 16)
        x, y, w, h, _ = struct.unpack_from(">HHHHi", head, 4)
        return (x, y, w, h), _recv(self.ours, w * h * 4)

    def ask_all(self) -> list[tuple[tuple[int, int, int, int], bytes]]:
        """An incremental request; every rectangle of the update."""
        self.ours.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, 3, 2))
        count = struct.unpack(">xxH", _recv(self.ours, 4))[0]
        rects = []
        for _ in range(count):
            x, y, w, h, _ = struct.unpack(">HHHHi", _recv(self.ours, 12))
            rects.append(((x, y, w, h), _recv(self.ours, w * h * 4)))
        return rects

    def end(self, index: int) -> None:
        os.close(self.pipes[index][1])
        self.pipes[index] = (self.pipes[index][0], -1)

    def close(self) -> None:
        for index, (_, write_end) in enumerate(self.pipes):
            if write_end >= 0:
                self.end(index)
        self.thread.join(10)
        self.ours.close()
        for read_end, _ in self.pipes:
            os.close(read_end)


@pytest.fixture
def served() -> Iterator[Served]:
    serving = Served()
    yield serving
    serving.close()


RED, BLUE = bytes([0, 0, 255, 0]), bytes([255, 0, 0, 0])  # BGRx


def test_the_picture_holds_each_piece_in_its_place(served: Served) -> None:
    served.frame(0, RED * 4)
    served.frame(1, BLUE)
    rect, pixels = served.ask(incremental=False)
    assert rect == (0, 0, 3, 2)
    assert pixels == RED * 2 + BLUE + RED * 2 + bytes(4)  # nothing under the 1x1 piece
    # one piece changes: only its changed rectangle comes back, nothing of the other
    served.frame(1, RED)
    rect, pixels = served.ask(incremental=True)
    assert rect == (2, 0, 1, 1)
    assert pixels == RED


def test_an_update_is_the_changed_rectangles_only(served: Served) -> None:
    """Each piece's changed band, not the picture's: two pieces, two rectangles."""
    served.frame(0, RED * 4)
    served.frame(1, RED)
    served.ask(incremental=False)
    served.frame(0, RED * 2 + BLUE + RED)  # its second row
    served.frame(1, BLUE)
    assert sorted(served.ask_all()) == [((0, 1, 2, 1), BLUE + RED), ((2, 0, 1, 1), BLUE)]
    served.frame(0, RED * 2 + BLUE + RED)  # the same again: nothing to send
    served.frame(1, RED)
    assert served.ask_all() == [((2, 0, 1, 1), RED)]


def test_the_first_picture_waits_for_every_piece(served: Served) -> None:
    served.frame(0, RED * 4)
    served.ours.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 3, 2))
    served.ours.settimeout(0.5)
    with pytest.raises(TimeoutError):
        served.ours.recv(1)  # the second piece has sent nothing yet
    served.ours.settimeout(None)
    served.frame(1, BLUE)
    head = _recv(served.ours, 16)
    assert struct.unpack_from(">HHHHi", head, 4) == (0, 0, 3, 2, 0)
    assert _recv(served.ours, 24)[8:12] == BLUE


def test_a_piece_that_never_sends_leaves_its_place_black_after_the_wait(served: Served) -> None:
    served.frame(0, BLUE * 4)
    rect, pixels = served.ask(incremental=False)  # answered once the wait is over
    assert rect == (0, 0, 3, 2)
    assert pixels == BLUE * 2 + bytes(4) + BLUE * 2 + bytes(4)


def test_any_pieces_end_ends_the_picture(served: Served) -> None:
    served.frame(0, RED * 4)
    served.end(1)
    served.thread.join(10)
    assert served.failures and isinstance(served.failures[0], StreamEnded)


def test_a_piece_outside_the_picture_is_refused() -> None:
    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="outside the picture"):
            RfbServer(theirs, 3, 2, name="t").serve([Piece(read_end, 2, 0, 2, 1)])
    finally:
        for closing in (ours, theirs):
            closing.close()
        for fd in (read_end, write_end):
            os.close(fd)


# --- wlroots: one wayvnc per output, read as a viewer (rfbupstream) and relayed to


def wayvnc_side(
    width: int, height: int, updates: list[bytes], name_length: int | None = None
) -> Iterator[bytes]:
    """What a wayvnc says, as the bytes to send after each of the reader's messages
    (``name_length``: the length it claims for its name, whatever it sends)."""
    yield b"RFB 003.008\n"
    yield b"\x01\x01"  # after the version: one security type, None
    yield struct.pack(">I", 0)  # after the choice: OK
    name = b"wayvnc"
    claimed = len(name) if name_length is None else name_length
    yield struct.pack(">HH", width, height) + bytes(16) + struct.pack(">I", claimed) + name
    yield from updates


def raw_update(*rects: tuple[int, int, int, int, bytes], encoding: int = 0) -> bytes:
    body = b"".join(struct.pack(">HHHHi", x, y, w, h, encoding) + px for x, y, w, h, px in rects)
    return struct.pack(">BxH", 0, len(rects)) + body


PLACE = (2, 1)  # the output (3x2) at (2, 1) of a 5x3 picture


def upstream_run(
    updates: list[bytes], name_length: int | None = None
) -> tuple[list[list[tuple[int, int, int, int]]], bytes, BaseException | None, Canvas]:
    """A reader against a scripted wayvnc (3x2) writing into a 5x3 canvas at PLACE:
    the damage after each update, what it sent, why it stopped, the canvas."""
    ours, theirs = socket.socketpair()
    canvas = Canvas(5, 3, sources=1)
    upstream = Upstream(theirs)
    failure: list[BaseException] = []
    damage: list[list[tuple[int, int, int, int]]] = []
    updated = threading.Semaphore(0)
    real_damaged = canvas.damaged

    def damaged(rect: tuple[int, int, int, int] | None, source: int) -> None:
        real_damaged(rect, source)
        updated.release()

    canvas.damaged = damaged  # type: ignore[method-assign]

    def read() -> None:
        try:
            upstream.handshake()
            upstream.run(canvas, *PLACE, 0)
        except (UpstreamError, OSError) as exc:
            failure.append(exc)
        finally:
            theirs.close()
            updated.release()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    for index, chunk in enumerate(wayvnc_side(3, 2, updates, name_length)):
        ours.sendall(chunk)
        if index >= 4 and chunk[:1] == b"\0":  # an update: wait until it is in
            assert updated.acquire(timeout=10), "the reader did not report the update"
            damage.append(canvas.take())
    ours.shutdown(socket.SHUT_WR)
    thread.join(10)
    sent = b""
    with contextlib.suppress(ConnectionResetError):  # closed with bytes it did not read
        while chunk := ours.recv(1 << 16):
            sent += chunk
    ours.close()
    return damage, sent, failure[0] if failure else None, canvas


def test_a_wayvnc_output_is_read_into_its_place_in_the_picture() -> None:
    damage, sent, failure, canvas = upstream_run(
        [raw_update((0, 0, 3, 2, RED * 6)), b"\x02", raw_update((1, 1, 2, 1, BLUE * 2))]
    )
    # each update's rectangles, where the output is in the picture, and nothing more
    assert damage == [[(2, 1, 3, 2)], [(3, 2, 2, 1)]]
    black = bytes(4)
    assert bytes(canvas.pixels) == black * 5 + black * 2 + RED * 3 + black * 2 + RED + BLUE * 2
    assert isinstance(failure, UpstreamError) and "closed" in str(failure)
    # the reader asked for BGRx, Raw only, a whole picture first, then increments
    assert sent.startswith(b"RFB 003.008\n\x01\x01")
    assert struct.pack(">BxHi", 2, 1, 0) in sent
    assert struct.pack(">BBHHHH", 3, 0, 0, 0, 3, 2) in sent
    assert sent.count(struct.pack(">BBHHHH", 3, 1, 0, 0, 3, 2)) == 2
    canvas.close()


@pytest.mark.parametrize(
    ("update", "says"),
    [
        (raw_update((0, 0, 1, 1, RED), encoding=16), "encoding 16"),
        (raw_update((2, 1, 2, 1, RED * 2)), "outside its picture"),
        (b"\x01", "type 1"),
    ],
)
def test_what_the_reader_does_not_take_ends_it(update: bytes, says: str) -> None:
    damage, _, failure, canvas = upstream_run([update])
    assert damage in ([], [[]])  # nothing reported, nothing drawn
    assert not any(canvas.pixels)
    canvas.close()
    assert isinstance(failure, UpstreamError) and says in str(failure)


def test_a_desktop_name_longer_than_a_name_ends_the_reader_before_it_buffers_it() -> None:
    """A 4 GiB name would be read into memory: the reader refuses it from its length."""
    damage, _, failure, canvas = upstream_run([], name_length=0xFFFFFFFF)
    canvas.close()
    assert damage == []
    assert isinstance(failure, UpstreamError) and "desktop name of 4294967295 bytes" in str(failure)


def test_a_long_clipboard_from_wayvnc_is_drained_and_the_frames_go_on() -> None:
    text = b"x" * (3 << 20)  # read and dropped 1 MiB at a time
    cut = struct.pack(">B3xI", 3, len(text)) + text
    damage, _, failure, canvas = upstream_run([cut, raw_update((0, 0, 3, 2, RED * 6))])
    canvas.close()
    assert damage == [[(2, 1, 3, 2)]]
    assert isinstance(failure, UpstreamError) and "closed" in str(failure)


class Upstreams:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def of(self, index: int) -> Any:
        calls = self.calls

        class One:
            def key(self, keysym: int, down: bool) -> None:
                calls.append((index, "key", keysym, down))

            def pointer(self, mask: int, x: int, y: int) -> None:
                calls.append((index, "pointer", mask, x, y))

        return One()


def test_the_pointer_goes_to_the_wayvnc_of_the_output_under_it() -> None:
    record = Upstreams()
    picture = layout([Stream(0, 1024, 768, (0, 0)), Stream(1, 800, 600, (1024, 0))])
    relay = RelayInput([record.of(0), record.of(1)], picture)
    relay.pointer(1, 1124, 100)
    relay.pointer(0, 1500, 700)  # below HEADLESS-2: nowhere
    relay.pointer(0, 5, 6)
    relay.key(0x61, True)
    assert record.calls == [
        (1, "pointer", 1, 100, 100),
        (0, "pointer", 0, 5, 6),
        (0, "key", 0x61, True),
    ]


def engine_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """An engine process run to its end on a socketpair, as the session helper runs it."""
    ours, theirs = socket.socketpair()
    try:
        return subprocess.run(
            argv,
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=subprocess.PIPE,
            env=env,
            timeout=30,
            check=False,
            text=True,
        )
    finally:
        ours.close()
        theirs.close()


def test_the_wlroots_engine_says_why_it_cannot_start(tmp_path: Path) -> None:
    """The real engine process, on a socketpair as the helper runs it: without
    sway (no outputs to ask) it exits 1 with one line, and nothing is left."""
    env = {"PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": ROOT}
    done = engine_process([sys.executable, "-m", "allowhelp.agent.wayvncall", "--control"], env)
    assert done.returncode == 1
    assert done.stderr.strip() == "sway reported no outputs"
    assert list(tmp_path.iterdir()) == []


# --- the one picture (rfbcanvas)


def test_damage_is_kept_as_rectangles_then_as_the_one_holding_them() -> None:
    canvas = Canvas(100, 100, sources=1)
    try:
        canvas.damaged((10, 10, 5, 5), 0)
        canvas.damaged((11, 11, 2, 2), 0)  # inside the first: nothing more to send
        canvas.damaged((50, 60, 4, 4), 0)
        assert canvas.take() == [(10, 10, 5, 5), (50, 60, 4, 4)]
        assert canvas.take() == []
        for index in range(MAX_RECTS + 1):
            canvas.damaged((index * 5, 2 * index, 1, 1), 0)
        assert canvas.take() == [(0, 0, MAX_RECTS * 5 + 1, 2 * MAX_RECTS + 1)]
    finally:
        canvas.close()


def test_a_reader_ending_after_the_picture_closed_writes_into_no_other_pipe() -> None:
    """Reader threads end after the server (their sockets close under them): their
    last report must not land in whatever reuses the wake-up pipe's numbers."""
    canvas = Canvas(4, 4, sources=1)
    canvas.close()
    read_end, write_end = os.pipe()  # the lowest free numbers: the wake-up pipe's
    try:
        canvas.stop("an output's picture stopped")
        canvas.damaged((0, 0, 1, 1), 0)
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_every_wayvnc_gets_a_path_even_from_a_session_without_one() -> None:
    """One launch for one output and for each of all outputs: the same environment."""
    given = wayvnc_environment({"WAYLAND_DISPLAY": "wayland-1", "SECRET": "x"})
    assert given == {"WAYLAND_DISPLAY": "wayland-1", "PATH": "/usr/local/bin:/usr/bin:/bin"}


def test_the_portal_engine_says_why_it_cannot_start(tmp_path: Path) -> None:
    """The real engine process, as the helper runs it, with no session bus to find
    the portal on: exit 1 with one line (the same main as the wlroots engine's)."""
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": ROOT}
    done = engine_process(["/usr/bin/python3", "-m", "allowhelp.agent.portalvnc", "--control"], env)
    assert done.returncode == 1
    assert done.stderr.startswith("no session bus for the portal: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
