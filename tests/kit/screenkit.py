"""Helpers for the screen tests: a private Xvfb with a window that logs its keys
and a window of a known colour, a Python RFB client over the screen WebSocket,
and process/socket probes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import websockets

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from harness import Agent, Broker, Desk, Fleet, agent_cli, wait_for

SCREEN_SIZE = (800, 600)
# What tells an agent which desktop session it runs in (and the screen engine's
# test knob): left out of the tests' own environment, so an agent sees only the
# session a test gives it.
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", TEST_COMMAND_ENV)
# The keys window (xev): white, here. The root is black (Xvfb -br).
KEYLOG_BOX = (150, 100, 500, 400)
# A window of one known colour at a known place, away from the keys window and
# from where the tests put the pointer (x11vnc may paint the cursor in).
MARK_COLOUR = (0x12, 0xAB, 0x34)
MARK_BOX = (20, 20, 110, 60)  # x, y, width, height
MARK_WINDOW = """
import sys, tkinter
root = tkinter.Tk()
root.title("allowhelp-colour")
root.geometry(sys.argv[2])
root.configure(background=sys.argv[1], borderwidth=0, highlightthickness=0)
root.update()
print("shown", flush=True)
root.mainloop()
"""
FAKE_VNC = Path(__file__).with_name("fake_vnc.py")
# The fake server runs as this test's interpreter: venvs name it python or python3.
PYTHON_NAME = Path(sys.executable).name


@dataclass
class XServer:
    """Xvfb on a display number it picked itself (-displayfd), plus an ``xev`` window."""

    display: str
    proc: subprocess.Popen[bytes]
    keylog: Path
    xev: subprocess.Popen[bytes] | None = None
    window: str = ""
    mark: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.display}

    def keys_seen(self) -> str:
        return self.keylog.read_text(errors="replace") if self.keylog.exists() else ""

    def keys_mark(self) -> int:
        """Where the key log ends now, for ``keys_since``."""
        return len(self.keys_seen())

    def keys_since(self, mark: int) -> str:
        return self.keys_seen()[mark:]

    def type_locally(self, key: str) -> None:
        """A key typed at the PC itself (XTest, into the focused keys window)."""
        env = {**os.environ, **self.env()}
        subprocess.run(["xdotool", "key", key], env=env, check=True, timeout=10)

    def pointer(self) -> tuple[int, int]:
        env = {**os.environ, **self.env()}
        done = subprocess.run(
            ["xdotool", "getmouselocation", "--shell"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        values = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
        return int(values["X"]), int(values["Y"])

    def focus_window(self) -> None:
        """No window manager: give the logging window the keyboard and the pointer."""
        env = {**os.environ, **self.env()}
        for args in (["windowfocus", "--sync", self.window], ["mousemove", "400", "300"]):
            subprocess.run(["xdotool", *args], env=env, check=True, timeout=10)

    def close(self) -> None:
        for proc in (self.mark, self.xev, self.proc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def start_xserver(folder: Path) -> XServer:
    read_end, write_end = os.pipe()
    width, height = SCREEN_SIZE
    with (folder / "xvfb.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *("Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24"),
                *("-nolisten", "tcp", "-br", "-noreset"),
            ],
            pass_fds=[write_end],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    os.close(write_end)
    try:
        number = _read_line(read_end, 15)
    finally:
        os.close(read_end)
    server = XServer(f":{number}", proc, folder / "keys.log")
    try:
        _start_mark(server)
        _start_xev(server)
    except BaseException:
        server.close()
        raise
    return server


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError("Xvfb did not say which display it took")
        chunk = os.read(fd, 64)
        if not chunk:
            raise AssertionError("Xvfb exited before it took a display")
        data += chunk
    return data.decode().strip()


def _start_mark(server: XServer) -> None:
    """The known-colour window (Tk, no window manager: the geometry is exact),
    painted before this returns (it says so once its first paint is done)."""
    x, y, width, height = MARK_BOX
    colour = "#" + "".join(f"{part:02x}" for part in MARK_COLOUR)
    server.mark = subprocess.Popen(
        [sys.executable, "-c", MARK_WINDOW, colour, f"{width}x{height}+{x}+{y}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **server.env()},
        start_new_session=True,
    )
    assert server.mark.stdout is not None
    try:
        assert _read_line(server.mark.stdout.fileno(), 15) == "shown"
    finally:
        server.mark.stdout.close()


def _start_xev(server: XServer) -> None:
    """A white window that prints every key it receives to ``keylog``."""
    env = {**os.environ, **server.env()}
    with server.keylog.open("wb") as keylog:
        server.xev = subprocess.Popen(
            [
                "xev",
                "-event",
                "keyboard",
                "-geometry",
                "500x400+150+100",
                "-name",
                "allowhelp-keylog",
            ],
            stdout=keylog,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def window() -> str:
        found = subprocess.run(
            ["xdotool", "search", "--name", "allowhelp-keylog"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return found.stdout.split()[0] if found.stdout.split() else ""

    server.window = wait_for(window, 15, "the xev window")
    server.focus_window()


def on_pc(
    agent: Agent, command: str, session_id: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """``allowhelp-agent COMMAND [OPTIONS] -- SESSION_ID``: ids may begin with '-'."""
    return agent_cli(command, *options, "--config", str(agent.config), "--", session_id)


# --- the RFB client ---------------------------------------------------------


@dataclass
class ServerInit:
    width: int
    height: int
    bpp: int
    name: str
    security_types: bytes
    # The pixel format (true colour): byte order, and each channel's max and shift.
    big_endian: bool = False
    maxima: tuple[int, int, int] = (255, 255, 255)
    shifts: tuple[int, int, int] = (16, 8, 0)


@dataclass
class RfbClient:
    """Just enough RFB 3.8 to shake hands, ask for Raw updates and send input."""

    ws: Any
    buf: bytearray = field(default_factory=bytearray)

    async def read(self, size: int, timeout: float = 15) -> bytes:
        while len(self.buf) < size:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(frame, bytes), f"a text frame on the screen socket: {frame!r}"
            self.buf += frame
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def handshake(self) -> ServerInit:
        assert await self.read(12) == b"RFB 003.008\n"
        await self.send(b"RFB 003.008\n")
        count = (await self.read(1))[0]
        types = await self.read(count)
        await self.send(b"\x01")
        assert await self.read(4) == b"\0\0\0\0", "security result"
        await self.send(b"\x01")  # ClientInit: shared
        head = await self.read(24)
        width, height, bpp, _, big, _, *channels = struct.unpack_from(">HHBBBBHHHBBB", head)
        name = await self.read(struct.unpack_from(">I", head, 20)[0])
        return ServerInit(
            width,
            height,
            bpp,
            name.decode("utf-8", "replace"),
            types,
            bool(big),
            (channels[0], channels[1], channels[2]),
            (channels[3], channels[4], channels[5]),
        )

    async def request_raw(self, init: ServerInit, incremental: bool = False) -> None:
        await self.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        await self.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, init.width, init.height))

    async def framebuffer_update(self, init: ServerInit) -> list[tuple[int, int, int, int, bytes]]:
        """Read messages until a FramebufferUpdate; its Raw rectangles."""
        while True:
            kind = (await self.read(1))[0]
            if kind == 0:
                break
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                length = struct.unpack(">3xI", await self.read(7))[0]
                await self.read(length)
                continue
            raise AssertionError(f"unexpected server message {kind}")
        count = struct.unpack(">xH", await self.read(3))[0]
        rects = []
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
            assert encoding == 0, f"asked for Raw, got encoding {encoding}"
            rects.append((x, y, w, h, await self.read(w * h * init.bpp // 8)))
        return rects


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack(">BBxxI", 4, down, keysym)


def pointer_event(mask: int, x: int, y: int) -> bytes:
    return struct.pack(">BBHH", 5, mask, x, y)


@contextlib.asynccontextmanager
async def screen_socket(desk: Desk, session_id: str) -> Any:
    async with websockets.connect(
        desk.ws_url(session_id, "screen"),
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
        subprotocols=["binary"],  # type: ignore[list-item]
        max_size=4 * 1024 * 1024,  # offers permessage-deflate, as browsers do
    ) as ws:
        yield ws


# --- processes and sockets ----------------------------------------------------


def processes(argument: str, program: str = "x11vnc") -> list[int]:
    """PIDs of ``program`` whose command line has ``argument`` (e.g. the display)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program.encode()) and argument.encode() in argv:
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def listening_inodes() -> set[str]:
    """Socket inodes of every listening TCP socket (IPv4 and IPv6) in this namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def gone(pids: list[int]) -> bool:
    """Exited and reaped: not even a zombie left."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


Rect = tuple[int, int, int, int, bytes]


def pixel_at(rects: list[Rect], init: ServerInit, x: int, y: int) -> tuple[int, int, int]:
    """The colour (8 bits a channel) at ``x, y`` of a Raw framebuffer update."""
    size = init.bpp // 8
    for left, top, width, height, pixels in rects:
        if left <= x < left + width and top <= y < top + height:
            at = ((y - top) * width + (x - left)) * size
            value = int.from_bytes(pixels[at : at + size], "big" if init.big_endian else "little")
            return (
                _channel(value, init.maxima[0], init.shifts[0]),
                _channel(value, init.maxima[1], init.shifts[1]),
                _channel(value, init.maxima[2], init.shifts[2]),
            )
    raise AssertionError(f"no rectangle covers {x},{y}")


def _channel(value: int, maximum: int, shift: int) -> int:
    return ((value >> shift) & maximum) * 255 // maximum


def colour_box(
    rects: list[Rect], init: ServerInit, colour: tuple[int, int, int]
) -> tuple[int, int, int, int] | None:
    """Where ``colour`` is on the screen: its bounding box (x, y, width, height), and
    only if the box is that colour throughout; None when it is nowhere."""
    size = init.bpp // 8
    value = sum(
        (part * maximum // 255) << shift
        for part, maximum, shift in zip(colour, init.maxima, init.shifts, strict=True)
    )
    mask = sum(m << shift for m, shift in zip(init.maxima, init.shifts, strict=True))
    order: Literal["big", "little"] = "big" if init.big_endian else "little"
    found: list[tuple[int, int]] = []
    for left, top, width, _, pixels in rects:
        for at in range(0, len(pixels), size):
            if int.from_bytes(pixels[at : at + size], order) & mask == value:
                index = at // size
                found.append((left + index % width, top + index // width))
    if not found:
        return None
    xs, ys = [x for x, _ in found], [y for _, y in found]
    box = (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
    assert len(found) == box[2] * box[3], f"{colour} is not one solid rectangle: {box}"
    return box


def variance(pixels: bytes, bpp: int) -> int:
    """How many distinct pixel values; 1 means a blank (single-colour) picture."""
    step = bpp // 8
    return len({pixels[i : i + step] for i in range(0, len(pixels), step * 7)})


def agent_env(**extra: str) -> dict[str, str]:
    """This process's environment without its desktop session (``SESSION_VARS``),
    with ``extra`` (``DISPLAY=...``, the engine's test knob) added."""
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
    return {**env, **extra}


def start_agent(fleet: Fleet, broker: Broker, name: str, env: dict[str, str]) -> Agent:
    """A per-user agent enrolled with ``broker`` and started in ``env``, prompting
    nobody (the tests answer its requests); not waited for."""
    agent = fleet.agent(name)
    assert agent.enroll(broker.token()).returncode == 0
    agent.start("--reconnect-cap", "2", "--prompt", "none", env=env)
    return agent
