"""Bulk throughput through the product's real bulk path, the screen channel (issue #8).

allowhelp path: WebSocket client (TLS, subprotocol "binary") → broker (the screen
relay, which parses RFB: ``rfb.ClientFilter`` on every client message,
``ServerChecker`` on the handshake) → SSH channel → agent → a program on a
socketpair. That program is normally ``x11vnc -inetd``; here it is
:mod:`bench.rfbsink` (through the agent's ``ALLOWHELP_TEST_SCREEN_COMMAND``), an
RFB 3.8 server that costs next to nothing, so the figure is the relay's. The
shell channel (``throughput``) cannot answer the issue: its PTY caps any path,
OpenSSH's too, at tens of MB/s.

Baselines, the same rfbsink behind a TCP server in this process (one sink
process per connection, the accepted socket as its stdin and stdout):

* ``ssh -L`` through a throwaway local sshd, OpenSSH's default cipher (the
  headline ratio), and with ``aes128-gcm@openssh.com`` for information;
* raw loopback TCP (the ceiling of sink + client on this machine).

One RFB client drives every path (``bench.screen``'s handshake and update
reader, over a WebSocket or a socket). The figures, bytes on the wire / time:

* download: incremental FramebufferUpdateRequest, read one whole-screen Raw
  update (1024x1024x32 = 4 MiB + 16 bytes of headers), repeat, noVNC's loop;
* upload: ClientCutText messages of 256 KiB (the relay's ``MAX_CUT_TEXT``; one
  WebSocket message each, under ``MAX_INPUT_FRAME``), then a non-incremental
  FramebufferUpdateRequest; the sink answers it with a Bell once it has read
  everything before it, so first byte → Bell is the upload time.

Runs interleave the paths (A, B, C, A, B, C, ...), so noise from a busy machine
hits all of them; the table shows medians. CPU seconds per MB of the processes
on the allowhelp path go to the JSON, to tell which one limits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import struct
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import connect

from bench import openssh
from bench.common import PY, ROOT, Procs, children, free_port, log, median, proc_stat
from bench.screen import (
    Init,
    RfbStream,
    framebuffer_update,
    handshake,
    set_encodings,
    set_pixel_format_32,
    update_request,
)
from bench.sinks import SinkServer
from bench.stack import Installation

MIB = 1024 * 1024
CUT = 256 * 1024  # one ClientCutText message, header included (rfb.MAX_CUT_TEXT bounds the text)
CHUNK = 1 << 20
LIMIT = 60.0  # seconds any single read or write may wait
# by file path, stdlib only: the agent gives its screen program no PYTHONPATH
SINK = [PY, "-P", str(ROOT / "bench" / "rfbsink.py")]
OURS = "allowhelp (WS→broker→SSH→agent→RFB sink)"
SSH_DEFAULT = "ssh -L (default cipher)"
RAW = "raw loopback TCP"


class Stream(Protocol):
    """What the RFB client needs from a path (``bench.screen.RfbStream`` has it)."""

    async def read(self, size: int, limit: float = ...) -> bytes: ...

    async def skip(self, size: int, limit: float = ...) -> None: ...

    async def send(self, data: bytes) -> None: ...


class SocketStream:
    """RFB over a TCP socket, on the event loop's own socket calls (no thread hops)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.scratch = memoryview(bytearray(CHUNK))

    async def read(self, size: int, limit: float = LIMIT) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        async with asyncio.timeout(limit):
            while got < size:
                n = await self.loop.sock_recv_into(self.sock, view[got:])
                if not n:
                    raise ConnectionError("the RFB server closed the connection")
                got += n
        return bytes(buf)

    async def skip(self, size: int, limit: float = LIMIT) -> None:
        async with asyncio.timeout(limit):
            while size:
                n = await self.loop.sock_recv_into(self.sock, self.scratch[: min(size, CHUNK)])
                if not n:
                    raise ConnectionError("the RFB server closed the connection")
                size -= n

    async def send(self, data: bytes) -> None:
        async with asyncio.timeout(LIMIT):
            await self.loop.sock_sendall(self.sock, data)


class RfbServer(SinkServer):
    """127.0.0.1:port → one rfbsink process per connection (the socket is its stdio)."""

    def __init__(self, procs: Procs, log_path: Path) -> None:
        self.procs = procs
        self.log_path = log_path
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        with conn, self.log_path.open("ab") as err:
            proc = subprocess.Popen(
                SINK,
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                stderr=err,
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs.procs.append(proc)  # stopped with the rest, whatever happens


# --- the RFB client ------------------------------------------------------------


async def open_rfb(stream: Stream) -> Init:
    init = await handshake(stream)  # type: ignore[arg-type]
    await stream.send(set_pixel_format_32() + set_encodings([0]))  # Raw only
    return init


async def download(stream: Stream, init: Init, size: int) -> tuple[int, float]:
    """Whole-screen Raw updates until ``size`` bytes of pixels: (wire bytes, seconds)."""
    frame = init.width * init.height * 4
    updates = max(1, size // frame)
    request = update_request(init, incremental=True)
    t0 = time.perf_counter()
    for _ in range(updates):
        await stream.send(request)
        rects, pixels = await framebuffer_update(stream, init)  # type: ignore[arg-type]
        if (rects, pixels) != (1, init.width * init.height):
            raise RuntimeError(f"an update of {rects} rects, {pixels} pixels")
    return updates * (frame + 16), time.perf_counter() - t0


async def upload(stream: Stream, init: Init, size: int) -> tuple[int, float]:
    """256 KiB clipboard messages, then a Bell as the sink's receipt: (wire bytes, seconds)."""
    message = struct.pack(">BxxxI", 6, CUT - 8) + b"x" * (CUT - 8)
    count = max(1, size // CUT)
    t0 = time.perf_counter()
    for _ in range(count):
        await stream.send(message)
    await stream.send(update_request(init, incremental=False))
    bell = await stream.read(1, LIMIT)
    if bell != b"\x02":
        raise RuntimeError(f"expected a Bell after the upload, got {bell!r}")
    return count * CUT + 10, time.perf_counter() - t0


# --- the paths -----------------------------------------------------------------


async def open_screen(install: Installation, stack: AsyncExitStack) -> Stream:
    session_id = await asyncio.to_thread(install.consented, "screen", "bulk benchmark")
    stack.push_async_callback(asyncio.to_thread, install.end, session_id)
    ws = await stack.enter_async_context(
        connect(
            **install.ws_args(session_id, "screen"),
            subprotocols=["binary"],  # type: ignore[list-item]
            max_size=None,
            compression=None,
            ping_interval=None,
            open_timeout=30,
            close_timeout=10,
        )
    )
    if ws.subprotocol != "binary":
        raise RuntimeError(f"screen socket subprotocol {ws.subprotocol!r}")
    return RfbStream(ws)


async def open_tcp(port: int, stack: AsyncExitStack) -> Stream:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    stack.callback(sock.close)
    return SocketStream(sock)


def sink_pid(agent_pid: int) -> int | None:
    for pid in children(agent_pid):
        with contextlib.suppress(OSError):
            if b"rfbsink" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    found = {"client": time.process_time()}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError):
            found[name] = proc_stat(pid).cpu_s
    return found


async def _measure(
    install: Installation, sshd: openssh.Sshd | None, server: RfbServer, size: int, runs: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"bytes": size, "runs": runs, "message_bytes": CUT}
    ports: dict[str, int] = {}
    if sshd is not None:
        result["openssh_default_cipher"] = sshd.negotiated_cipher()
        for name, extra in (
            (SSH_DEFAULT, ()),
            ("ssh -L (aes128-gcm)", ("-c", "aes128-gcm@openssh.com")),
        ):
            ports[name] = free_port()
            sshd.forward(ports[name], server.port, *extra)
    ports[RAW] = server.port
    async with AsyncExitStack() as stack:
        streams = {OURS: await open_screen(install, stack)}
        for name, port in ports.items():
            streams[name] = await open_tcp(port, stack)
        inits = {}
        for name, stream in streams.items():
            inits[name] = await open_rfb(stream)
            await download(stream, inits[name], 4 * MIB)  # warm-up, not counted
            await upload(stream, inits[name], 4 * MIB)
        assert install.agent.proc is not None
        sink = sink_pid(install.agent.proc.pid)
        watched = {"broker": install.broker.pid, "agent": install.agent.proc.pid}
        watched |= {"sink": sink} if sink else {}
        first = next(iter(inits.values()))
        result["screen"] = f"{first.width}x{first.height}x32"
        samples: dict[str, dict[str, list[float]]] = {n: {"down": [], "up": []} for n in streams}
        cpu: dict[str, dict[str, list[float]]] = {"down": {}, "up": {}}
        for i in range(runs):
            for direction, move in (("down", download), ("up", upload)):
                for name, stream in streams.items():
                    before = cpu_seconds(watched if name == OURS else {})
                    nbytes, seconds = await move(stream, inits[name], size)
                    samples[name][direction].append(nbytes / seconds / 1e6)
                    after = cpu_seconds(watched if name == OURS else {})
                    if name == OURS:  # CPU seconds per MB moved, per process
                        for proc, t in after.items():
                            per_mb = (t - before[proc]) / (nbytes / 1e6)
                            cpu[direction].setdefault(proc, []).append(per_mb)
            done = "; ".join(
                f"{n}: {s['down'][-1]:.0f}/{s['up'][-1]:.0f}" for n, s in samples.items()
            )
            log(f"bulk run {i + 1}/{runs} (MB/s down/up) {done}")
    result["samples_mb_s"] = samples
    result["median_mb_s"] = {
        name: {d: median(v) for d, v in by_dir.items()} for name, by_dir in samples.items()
    }
    result["allowhelp_cpu_ms_per_mb"] = {
        d: {proc: round(median(v) * 1000, 3) for proc, v in by_proc.items()}
        for d, by_proc in cpu.items()
    }
    return result


def run(
    procs: Procs, root: Path, *, quick: bool, levers: list[str] | None = None
) -> dict[str, Any]:
    size = (64 if quick else 256) * MIB
    runs = 3 if quick else 5
    sshd, why = openssh.start_if_present(procs, root / "sshd")
    server = RfbServer(procs, root / "rfbsink.log")
    env = {"ALLOWHELP_TEST_SCREEN_COMMAND": shlex.join(SINK)}
    install = Installation.start(procs, root / "allowhelp", levers, agent_env=env)
    try:
        result = asyncio.run(_measure(install, sshd, server, size, runs))
    finally:
        install.close()
        server.close()
    result["levers"] = levers or []
    result["openssh_missing"] = why
    result["sink"] = shlex.join(SINK)
    return result
