"""A changing screen through the relay vs noVNC's websockify → x11vnc, same run (issue #6).

    .venv/bin/python -m bench.screen [--seconds 10] [--runs 3] [--encodings raw,zrle]

One private Xvfb (1280x800x24) with an xterm running ``base64 /dev/urandom`` over most of it, so
the picture changes all the time. Three paths, all on 127.0.0.1, driven by the
same Python RFB 3.8 client:

``allowhelp``   a real broker and agent (the agent started with DISPLAY), a screen
                session asked through the API and allowed with
                ``allowhelp-agent allow``, then ``wss://…/api/v1/sessions/{id}/screen``
                (TLS, cookie, Origin, subprotocol "binary"). The agent's own
                ``x11vnc -inetd`` sits behind the SSH tunnel.
``direct-ws``   ``x11vnc -rfbport P -localhost`` (the agent's options otherwise)
                behind ``websockify 127.0.0.1:W 127.0.0.1:P``: plain ws, no TLS
                (websockify's default), what noVNC → websockify → x11vnc is.
``direct-wss``  the same websockify with a self-signed certificate: TLS to TLS.

The client loop is noVNC's: send an incremental FramebufferUpdateRequest for the
whole screen, read one complete FramebufferUpdate, repeat, for a fixed time.
Rectangles are skipped by length, not decoded (Raw: w*h*4 bytes; ZRLE: its
4-byte length), so the client costs little. Runs interleave the paths
(A, B, B-tls, A, B, B-tls, ...) so noise from the machine hits all of them;
the table shows medians. Per-run CPU seconds of each side's processes are
recorded to tell what limits the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import ssl
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets

from bench.common import (
    ROOT,
    Procs,
    children,
    dump_json,
    fmt,
    free_port,
    log,
    machine,
    median,
    proc_stat,
    table,
    versions,
    wait_for,
)
from bench.stack import Installation

GOAL = 0.95
CONTENT = {
    "xterm": "xterm 210x60 running `base64 /dev/urandom`",
    "tk": "Tk full-window colour flip every 16 ms",
}
WIDTH, HEIGHT = 1280, 800
ENCODINGS = {"raw": 0, "zrle": 16}
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "ALLOWHELP_TEST_SCREEN_COMMAND")
# The agent's x11vnc options (allowhelp/agent/screen.py) minus -inetd/-once, plus a port.
X11VNC_OPTS = [
    *("-norc", "-nopw", "-safer", "-nocmds", "-noipv6", "-nolookup", "-nonc"),
    *("-noxdamage", "-noprimary", "-nosetprimary", "-forever", "-shared", "-localhost"),
]


# --- the RFB client ----------------------------------------------------------


class RfbStream:
    """RFB over a WebSocket: exact reads and cheap skips, counting every byte received."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buf = bytearray()
        self.received = 0

    async def _more(self, limit: float) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), limit)
        if not isinstance(frame, bytes):
            raise RuntimeError(f"a text frame on the screen socket: {frame[:80]!r}")
        self.received += len(frame)
        self.buf += frame

    async def read(self, size: int, limit: float = 15) -> bytes:
        while len(self.buf) < size:
            await self._more(limit)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def skip(self, size: int, limit: float = 15) -> None:
        while size > 0:
            if not self.buf:
                await self._more(limit)
            take = min(size, len(self.buf))
            del self.buf[:take]
            size -= take

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)


@dataclass
class Init:
    width: int
    height: int
    name: str


async def handshake(rfb: RfbStream) -> Init:
    version = await rfb.read(12)
    if version != b"RFB 003.008\n":
        raise RuntimeError(f"unexpected RFB version {version!r}")
    await rfb.send(b"RFB 003.008\n")
    count = (await rfb.read(1))[0]
    if count == 0:
        raise RuntimeError("the server refused the connection")
    types = await rfb.read(count)
    if 1 not in types:
        raise RuntimeError(f"no security type None offered: {list(types)}")
    await rfb.send(b"\x01")
    if await rfb.read(4) != b"\0\0\0\0":
        raise RuntimeError("security handshake failed")
    await rfb.send(b"\x01")  # ClientInit: shared
    head = await rfb.read(24)
    width, height = struct.unpack_from(">HH", head)
    name = await rfb.read(struct.unpack_from(">I", head, 20)[0])
    return Init(width, height, name.decode("utf-8", "replace"))


def set_pixel_format_32() -> bytes:
    # 32 bpp, depth 24, little endian, true colour, 8 bits each at 16/8/0
    pf = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">Bxxx", 0) + pf


def set_encodings(codes: list[int]) -> bytes:
    return struct.pack(">BxH", 2, len(codes)) + b"".join(struct.pack(">i", c) for c in codes)


def update_request(init: Init, incremental: bool) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, init.width, init.height)


async def framebuffer_update(rfb: RfbStream, init: Init) -> tuple[int, int]:
    """Read server messages up to and including one FramebufferUpdate: (rects, pixels)."""
    while True:
        kind = (await rfb.read(1))[0]
        if kind == 0:
            break
        if kind == 2:  # Bell
            continue
        if kind == 3:  # ServerCutText
            length = struct.unpack(">3xI", await rfb.read(7))[0]
            await rfb.skip(length)
            continue
        if kind == 1:  # SetColourMapEntries (not with true colour, but be safe)
            count = struct.unpack(">xHH", await rfb.read(5))[1]
            await rfb.skip(6 * count)
            continue
        raise RuntimeError(f"unexpected server message type {kind}")
    count = struct.unpack(">xH", await rfb.read(3))[0]
    pixels = 0
    for _ in range(count):
        _x, _y, w, h, encoding = struct.unpack(">HHHHi", await rfb.read(12))
        if encoding == 0:  # Raw
            await rfb.skip(w * h * 4)
        elif encoding == 16:  # ZRLE: u32 length + zlib data
            await rfb.skip(struct.unpack(">I", await rfb.read(4))[0])
        elif encoding == -223:  # DesktopSize
            init.width, init.height = w, h
        elif encoding == -239:  # Cursor: pixels + bitmask
            await rfb.skip(w * h * 4 + ((w + 7) // 8) * h)
        elif encoding == -232:  # PointerPos
            pass
        else:
            raise RuntimeError(f"cannot skip a rectangle in encoding {encoding}")
        pixels += w * h
    return count, pixels


@dataclass
class Run:
    path: str
    encoding: str
    run: int
    seconds: float
    frames: int
    rects: int
    bytes: int
    pixels: int
    fps: float
    mb_per_s: float
    screens_per_s: float  # changed pixels per second / (1280*800)
    client_cpu_s: float
    server_cpu_cores: dict[str, float] = field(default_factory=dict)


async def drive(
    ws: Any, encoding: str, seconds: float, warmup: float
) -> tuple[int, int, int, int, float, float]:
    """Handshake, then request/read updates for ``seconds``: frames, rects, bytes, pixels."""
    rfb = RfbStream(ws)
    init = await handshake(rfb)
    if (init.width, init.height) != (WIDTH, HEIGHT):
        raise RuntimeError(f"screen is {init.width}x{init.height}, expected {WIDTH}x{HEIGHT}")
    await rfb.send(set_pixel_format_32() + set_encodings([ENCODINGS[encoding]]))
    # a first full picture, not counted: both paths start from the same state
    await rfb.send(update_request(init, incremental=False))
    await framebuffer_update(rfb, init)
    # then updates, not counted, for ``warmup`` seconds: a fresh x11vnc (the agent
    # starts one per session) waits ~3 s before it first polls the screen
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until:
        await rfb.send(update_request(init, incremental=True))
        await framebuffer_update(rfb, init)
    frames = rects = pixels = 0
    start_bytes = rfb.received - len(rfb.buf)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        await rfb.send(update_request(init, incremental=True))
        n, p = await framebuffer_update(rfb, init)
        frames += 1
        rects += n
        pixels += p
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    got = rfb.received - len(rfb.buf) - start_bytes
    return frames, rects, got, pixels, elapsed, time.process_time() - cpu0


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError):
            found[name] = proc_stat(pid).cpu_s
    return found


def x11vnc_pids(display: str) -> list[int]:
    """The agent's x11vnc on this display (``-inetd``), not the direct path's one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"x11vnc") and display.encode() in argv and b"-inetd" in argv:
                found.append(int(entry.name))
    return found


async def measure(
    path: str,
    encoding: str,
    run: int,
    seconds: float,
    warmup: float,
    connect: dict[str, Any],
    pids: Any,
) -> Run:
    async with websockets.connect(
        subprotocols=["binary"],  # type: ignore[list-item]
        compression=None,
        max_size=None,
        **connect,
    ) as ws:
        if ws.subprotocol != "binary":
            raise RuntimeError(f"{path}: subprotocol {ws.subprotocol!r}")
        # the processes to watch exist once the socket is up (the agent's x11vnc)
        watched: dict[str, int] = await asyncio.to_thread(pids)
        before, w0 = cpu_of(watched), time.perf_counter()
        frames, rects, nbytes, pixels, elapsed, client_cpu = await drive(
            ws, encoding, seconds, warmup
        )
        after, window = cpu_of(watched), time.perf_counter() - w0
    # CPU share over the whole connection (warm-up included): 1.0 = one core busy
    server = {k: round((after[k] - before[k]) / window, 3) for k in before if k in after}
    result = Run(
        path,
        encoding,
        run,
        round(elapsed, 3),
        frames,
        rects,
        nbytes,
        pixels,
        frames / elapsed,
        nbytes / elapsed / 1e6,
        pixels / elapsed / (WIDTH * HEIGHT),
        round(client_cpu, 2),
        server,
    )
    log(
        f"{path:10s} {encoding:4s} run {run}: {result.fps:6.1f} fps "
        f"{result.mb_per_s:7.2f} MB/s {result.screens_per_s:5.2f} screens/s cpu {server}"
    )
    return result


# --- the processes -----------------------------------------------------------


def free_display() -> int:
    for n in range(70, 90):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display in :70-:89")


# A full-window colour flip ~60 times a second: every pixel changes every frame.
TK_FLIP = """
import tkinter as tk
root = tk.Tk()
root.geometry("%dx%d+0+0" % (WIDTH, HEIGHT))
root.overrideredirect(True)
canvas = tk.Canvas(root, width=WIDTH, height=HEIGHT, highlightthickness=0)
canvas.pack()
rect = canvas.create_rectangle(0, 0, WIDTH, HEIGHT, width=0, fill="#000000")
state = [0]
def tick():
    state[0] = (state[0] + 37) % 4096
    v = state[0]
    canvas.itemconfigure(rect, fill="#%02x%02x%02x" % (v % 256, (v * 7) % 256, (v // 16) % 256))
    root.after(16, tick)
tick()
root.mainloop()
"""


def start_screen(procs: Procs, folder: Path, content: str = "xterm") -> str:
    n = free_display()
    display = f":{n}"
    procs.start(
        [
            *("Xvfb", display, "-screen", "0", f"{WIDTH}x{HEIGHT}x24"),
            *("-nolisten", "tcp", "-br", "-noreset"),
        ],
        log_path=folder / "xvfb.log",
    )
    wait_for(lambda: Path(f"/tmp/.X11-unix/X{n}").exists(), 15, "Xvfb to listen")
    if content == "tk":
        script = folder / "flip.py"
        script.write_text(f"WIDTH, HEIGHT = {WIDTH}, {HEIGHT}\n{TK_FLIP}")
        procs.start(
            ["/usr/bin/python3", str(script)], log_path=folder / "tk.log", env={"DISPLAY": display}
        )
        time.sleep(1.5)
        return display
    if not shutil.which("xterm"):
        raise RuntimeError("xterm is not installed (apt-get install -y xterm)")
    procs.start(
        [
            *("xterm", "-geometry", "210x60+0+0", "-fa", "", "-fn", "fixed"),
            *("-e", "base64 /dev/urandom"),
        ],
        log_path=folder / "xterm.log",
        env={"DISPLAY": display},
    )
    time.sleep(1.0)
    return display


@dataclass
class Allowhelp(Installation):
    """The stack with the agent on the bench's X display, asked for a screen."""

    display: str = ""

    @classmethod
    def on_display(
        cls,
        procs: Procs,
        root: Path,
        display: str,
        levers: list[str] | None = None,
        idle: str = "tunnel",
    ) -> Allowhelp:
        base = Installation.start(
            procs, root, levers, agent_env={"DISPLAY": display}, agent_hide=SESSION_VARS, idle=idle
        )
        return cls(base.broker, base.agent, base.desk, display)

    def consented_screen(self) -> str:
        return self.consented("screen", "screen bench")

    def pids(self) -> dict[str, int]:
        assert self.agent.proc is not None
        found = {"broker": self.broker.pid, "agent": self.agent.proc.pid}
        vnc = wait_for(lambda: x11vnc_pids(self.display), 10, "the agent's x11vnc")
        found["x11vnc"] = vnc[0]
        return found

    def wait_ended(self, session_id: str) -> None:
        wait_for(
            lambda: (
                self.desk.client.get(f"/api/v1/sessions/{session_id}").json()["state"] == "ended"
            ),
            20,
            "the session to end",
            step=0.1,
        )
        wait_for(lambda: not x11vnc_pids(self.display), 10, "the agent's x11vnc to go")


@dataclass
class Direct:
    x11vnc: subprocess.Popen[bytes]
    websockify: subprocess.Popen[bytes]
    ws_port: int
    cafile: Path

    @classmethod
    def start(cls, procs: Procs, root: Path, display: str) -> Direct:
        root.mkdir(parents=True, exist_ok=True)
        cert, key = root / "cert.pem", root / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
                *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        vnc_port, ws_port = free_port(), free_port()
        vnc = procs.start(
            ["x11vnc", "-display", display, "-rfbport", str(vnc_port), *X11VNC_OPTS],
            log_path=root / "x11vnc.log",
        )
        wait_for(lambda: _listening(vnc_port), 20, "x11vnc to listen")
        wsk = procs.start(
            [
                str(ROOT / ".venv" / "bin" / "websockify"),
                *("--cert", str(cert), "--key", str(key)),
                f"127.0.0.1:{ws_port}",
                f"127.0.0.1:{vnc_port}",
            ],
            log_path=root / "websockify.log",
        )
        wait_for(lambda: _listening(ws_port), 20, "websockify to listen")
        return cls(vnc, wsk, ws_port, cert)

    def connect_args(self, tls: bool) -> dict[str, Any]:
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.cafile))
            return {"uri": f"wss://127.0.0.1:{self.ws_port}/", "ssl": ctx}
        return {"uri": f"ws://127.0.0.1:{self.ws_port}/"}

    def pids(self) -> dict[str, int]:
        found = {"x11vnc": self.x11vnc.pid, "websockify": self.websockify.pid}
        # websockify forks one handler process per connection
        for i, child in enumerate(children(self.websockify.pid)):
            found[f"websockify-child{i}"] = child
        return found


def _listening(port: int) -> bool:
    import socket  # noqa: PLC0415

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


# --- the benchmark -----------------------------------------------------------


def summarise(runs: list[Run], paths: list[str], encodings: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for enc in encodings:
        base = [r for r in runs if r.encoding == enc and r.path == "allowhelp"]
        a_fps = median([r.fps for r in base])
        a_mbs = median([r.mb_per_s for r in base])
        for path in paths:
            mine = [r for r in runs if r.encoding == enc and r.path == path]
            fps, mbs = median([r.fps for r in mine]), median([r.mb_per_s for r in mine])
            cpu: dict[str, float] = {}
            for r in mine:
                for k, v in r.server_cpu_cores.items():
                    cpu.setdefault(k, 0.0)
                    cpu[k] += v / len(mine)  # mean CPU share (1.0 = one core)
            rows.append(
                {
                    "path": path,
                    "encoding": enc,
                    "fps": fps,
                    "mb_per_s": mbs,
                    "screens_per_s": median([r.screens_per_s for r in mine]),
                    "fps_runs": [round(r.fps, 1) for r in mine],
                    "ratio_fps": a_fps / fps if path != "allowhelp" else None,
                    "ratio_mbs": a_mbs / mbs if path != "allowhelp" else None,
                    "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
                    "client_cpu_cores": round(
                        median([r.client_cpu_s / r.seconds for r in mine]), 2
                    ),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.screen", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=4.0, help="uncounted seconds per run")
    parser.add_argument("--encodings", default="raw,zrle")
    parser.add_argument(
        "--lever",
        action="append",
        default=[],
        help="a bench.launch flag for the broker and agent (e.g. --lever=--pktsize=1048576);"
        " an experiment, never the headline",
    )
    parser.add_argument("--paths", default="allowhelp,direct-ws,direct-wss")
    parser.add_argument(
        "--content",
        choices=("xterm", "tk"),
        default="xterm",
        help="xterm: text scrolling (base64 /dev/urandom); tk: full-window colour flip at ~60 Hz",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "screen.json")
    args = parser.parse_args()
    encodings = [e for e in args.encodings.split(",") if e]
    for e in encodings:
        if e not in ENCODINGS:
            parser.error(f"unknown encoding {e!r} (raw, zrle)")
    paths = [p for p in args.paths.split(",") if p]
    if "allowhelp" not in paths:
        parser.error("--paths must include allowhelp (the ratios are against it)")

    procs = Procs()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="allowhelp-screen-bench-") as tmp:
        root = Path(tmp)
        try:
            display = start_screen(procs, root, args.content)
            log(f"Xvfb {display} {WIDTH}x{HEIGHT}x24, content {args.content}")
            install = Allowhelp.on_display(procs, root / "ah", display, args.lever)
            direct = Direct.start(procs, root / "direct", display)
            log(f"broker {install.broker.url}, websockify on {direct.ws_port}")

            async def one(path: str, enc: str, i: int) -> Run:
                if path == "allowhelp":
                    sid = await asyncio.to_thread(install.consented_screen)
                    result = await measure(
                        path,
                        enc,
                        i,
                        args.seconds,
                        args.warmup,
                        install.ws_args(sid, "screen"),
                        install.pids,
                    )
                    await asyncio.to_thread(install.wait_ended, sid)
                    return result
                return await measure(
                    path,
                    enc,
                    i,
                    args.seconds,
                    args.warmup,
                    direct.connect_args(path == "direct-wss"),
                    direct.pids,
                )

            async def everything() -> None:
                # one warm-up of each path, not counted
                for path in paths:
                    await one(path, encodings[0], 0)
                for enc in encodings:
                    for i in range(1, args.runs + 1):
                        for path in paths:
                            runs.append(await one(path, enc, i))

            asyncio.run(everything())
            install.desk.close()
        finally:
            procs.close()

    rows = summarise(runs, paths, encodings)
    printable = []
    for row in rows:
        ratio = row["ratio_fps"]
        met = (
            "-"
            if ratio is None
            else ("met" if ratio >= GOAL and row["ratio_mbs"] >= GOAL else "not met")
        )
        printable.append(
            [
                row["path"],
                row["encoding"],
                fmt(row["fps"]),
                fmt(row["mb_per_s"], 2),
                fmt(row["screens_per_s"], 2),
                "-" if ratio is None else fmt(ratio, 2),
                "-" if ratio is None else fmt(row["ratio_mbs"], 2),
                "-" if ratio is None else f"{GOAL}",
                met,
            ]
        )
    print(
        f"Screen: {WIDTH}x{HEIGHT}x24, {CONTENT[args.content]}, {args.seconds:g} s"
        f" x {args.runs} runs (after {args.warmup:g} s warm-up), medians;"
        " ratio = allowhelp / direct"
    )
    print(
        table(
            [
                "path",
                "enc",
                "fps",
                "MB/s",
                "screens/s",
                "ratio fps",
                "ratio MB/s",
                "goal",
                "result",
            ],
            printable,
        )
    )
    print()
    print(
        table(
            ["path", "enc", "fps per run", "server CPU (cores)", "client CPU (cores)"],
            [
                [
                    r["path"],
                    r["encoding"],
                    " ".join(str(x) for x in r["fps_runs"]),
                    ", ".join(f"{k} {v}" for k, v in r["cpu_cores"].items()),
                    r["client_cpu_cores"],
                ]
                for r in rows
            ],
        )
    )
    dump_json(
        args.out,
        {
            "benchmark": "screen",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "screen": f"{WIDTH}x{HEIGHT}x24",
            "content": CONTENT[args.content],
            "seconds": args.seconds,
            "runs": args.runs,
            "warmup_seconds": args.warmup,
            "levers": args.lever,
            "goal": GOAL,
            "notes": [
                "direct-ws: websockify without TLS (its default); direct-wss: same websockify"
                " with a self-signed P-256 certificate",
                "client loop: incremental FramebufferUpdateRequest, read one update, repeat",
                "x11vnc options as the agent's (allowhelp/agent/screen.py) but with"
                " -rfbport/-localhost/-forever/-shared instead of -inetd/-once",
            ],
            "summary": rows,
            "runs_detail": [asdict(r) for r in runs],
            "machine": machine(),
            "versions": versions(),
        },
    )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
