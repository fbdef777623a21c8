"""Bulk throughput through the whole product path, against ``ssh -L`` and raw loopback.

allowhelp path: WebSocket client → broker (uvicorn/starlette relay, recording)
→ SSH tunnel (asyncssh) → agent → the consented shell's PTY. The PTY is put in
raw mode (``stty raw -echo``) so it passes bytes unchanged; ``head -c N`` is the
sink (upload) and ``head -c N /dev/zero | tr '\\000' a`` the source (download,
printable so the asciicast recording stores it 1:1). The shell channel is the
only bulk path the product has today (the screen channel bridges x11vnc).

Baselines, measured interleaved in the same run so their ratio survives noise:

* ``ssh -L`` through a throwaway local sshd, OpenSSH's default cipher (the
  headline baseline the issue asks for), to a local TCP sink/source;
* raw loopback TCP to the same sink/source;
* for like-for-like, OpenSSH through a PTY: ``ssh -tt`` with the same raw
  ``stty`` + ``head`` commands (the PTY itself has a ceiling);
* for information, ``ssh -L`` with ``aes128-gcm@openssh.com`` (what allowhelp
  negotiates).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench import openssh
from bench.common import Procs, free_port, log, median
from bench.sinks import SinkServer, transfer
from bench.stack import Installation

MIB = 1024 * 1024
FRAME = 64 * 1024  # the relay refuses larger input frames (MAX_FRAME)


class TerminalPipe:
    """A terminal WebSocket used as a byte pipe once the PTY is raw."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.runs = 0

    async def _until(
        self, marker: bytes, wait: float = 60, initial: bytes = b""
    ) -> tuple[float, int, bytes]:
        """Read until ``marker``; return (time seen, bytes before it, bytes after it).

        ``initial`` is data already read (it counts, and is searched first)."""
        keep = len(marker) + 64
        at = initial.find(marker)
        if at >= 0:
            return time.perf_counter(), at, initial[at + len(marker) :]
        tail = initial[-keep:]
        count = len(initial)

        async def read() -> tuple[float, int, bytes]:
            nonlocal tail, count
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes)
                window = tail + frame
                at = window.find(marker)
                if at >= 0:
                    return time.perf_counter(), count - len(tail) + at, window[at + len(marker) :]
                count += len(frame)
                tail = window[-keep:]

        return await asyncio.wait_for(read(), wait)

    async def command(self, line: str) -> None:
        await self.ws.send(line.encode() + b"\n")

    async def download(self, size: int) -> float:
        self.runs += 1
        tag = f"-{self.runs:04d}-"
        await self.command(
            f"stty raw -echo; printf '\\102EGIN{tag}'; head -c {size} /dev/zero | tr '\\000' a;"
            f" printf '\\105ND{tag}'"
        )
        t0, _, rest = await self._until(f"BEGIN{tag}".encode())
        t1, before, _ = await self._until(f"END{tag}".encode(), 300, rest)
        if before != size:
            raise RuntimeError(f"download delivered {before} bytes, expected {size}")
        return t1 - t0

    async def upload(self, size: int) -> float:
        self.runs += 1
        tag = f"-{self.runs:04d}-"
        await self.command(
            f"stty raw -echo; printf '\\122EADY{tag}'; head -c {size} >/dev/null;"
            f" printf '\\104ONE{tag}'"
        )
        await self._until(f"READY{tag}".encode())
        block = b"x" * FRAME
        t0 = time.perf_counter()
        left = size
        while left:
            n = min(left, FRAME)
            await self.ws.send(block if n == FRAME else block[:n])
            left -= n
        t1, _, _ = await self._until(f"DONE{tag}".encode(), wait=300)
        return t1 - t0


@contextlib.asynccontextmanager
async def raw_terminal(install: Installation, session_id: str) -> AsyncIterator[TerminalPipe]:
    """The session's terminal socket as a byte pipe: PTY in raw mode, one 1 MiB
    download done so the first measured run does not pay the warm-up."""
    async with connect(
        **install.ws_args(session_id, query="?cols=200&rows=50"),
        max_size=None,
        compression=None,
        ping_interval=None,
    ) as ws:
        pipe = TerminalPipe(ws)
        await pipe.command("stty raw -echo")
        await pipe.download(MIB)
        yield pipe


def _read_until(
    fd: int, marker: bytes, initial: bytes = b"", timeout: float = 300
) -> tuple[float, int, bytes]:
    """Blocking read from ``fd`` until ``marker``: (time seen, bytes before it, bytes after)."""
    keep = len(marker) + 64
    at = initial.find(marker)
    if at >= 0:
        return time.perf_counter(), at, initial[at + len(marker) :]
    deadline = time.monotonic() + timeout
    tail = initial[-keep:]
    count = len(initial)
    while time.monotonic() < deadline:
        data = os.read(fd, 1 << 20)
        if not data:
            raise ConnectionError(f"EOF before {marker!r}")
        window = tail + data
        at = window.find(marker)
        if at >= 0:
            return time.perf_counter(), count - len(tail) + at, window[at + len(marker) :]
        count += len(data)
        tail = window[-keep:]
    raise TimeoutError(f"no {marker!r}")


def ssh_pty(sshd: openssh.Sshd, direction: str, size: int) -> float:
    """OpenSSH through a PTY (``ssh -tt``), the same raw stty + head commands."""
    if direction == "down":
        remote = (
            f"stty raw -echo; printf BEGIN; head -c {size} /dev/zero | tr '\\000' a; printf END"
        )
    else:
        remote = f"stty raw -echo; printf READY; head -c {size} >/dev/null; printf DONE"
    proc = subprocess.Popen(
        [*sshd.ssh_argv("-tt"), remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()
    try:
        if direction == "down":
            t0, _, rest = _read_until(out, b"BEGIN")
            t1, got, _ = _read_until(out, b"END", rest)
            if got != size:
                raise RuntimeError(f"ssh -tt delivered {got} bytes, expected {size}")
            return t1 - t0
        _read_until(out, b"READY")
        block = b"x" * FRAME
        t0 = time.perf_counter()
        left = size
        while left:
            n = min(left, FRAME)
            proc.stdin.write(block if n == FRAME else block[:n])
            left -= n
        t1, _, _ = _read_until(out, b"DONE")
        return t1 - t0
    finally:
        proc.kill()
        proc.wait(10)


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


async def _measure(
    install: Installation,
    sshd: openssh.Sshd | None,
    procs: Procs,
    size: int,
    runs: int,
) -> dict[str, Any]:
    sink = SinkServer()
    forwards: dict[str, int] = {}
    result: dict[str, Any] = {"bytes": size, "runs": runs}
    try:
        if sshd is not None:
            result["openssh_default_cipher"] = sshd.negotiated_cipher()
            for name, extra in (
                ("ssh -L (default cipher)", ()),
                ("ssh -L (aes128-gcm)", ("-c", "aes128-gcm@openssh.com")),
            ):
                port = free_port()
                sshd.forward(port, sink.port, *extra)
                forwards[name] = port
        session_id = await asyncio.to_thread(install.consented_shell, "throughput benchmark")
        async with raw_terminal(install, session_id) as pipe:
            await pipe.upload(MIB)  # warm-up (raw_terminal did a download)
            samples: dict[str, dict[str, list[float]]] = {}

            def add(name: str, direction: str, seconds: float) -> None:
                samples.setdefault(name, {"up": [], "down": []})[direction].append(
                    mbps(size, seconds)
                )

            for i in range(runs):
                for direction in ("down", "up"):
                    go: Callable[[int], Any] = pipe.download if direction == "down" else pipe.upload
                    add("allowhelp (WS→broker→SSH→agent→PTY)", direction, await go(size))
                    for name, port in forwards.items():
                        add(name, direction, transfer(port, direction, size))
                    add("raw loopback TCP", direction, transfer(sink.port, direction, size))
                    if sshd is not None:
                        add("ssh -tt through a PTY", direction, ssh_pty(sshd, direction, size))
                log(f"throughput run {i + 1}/{runs} done")
        await asyncio.to_thread(install.end, session_id)
        result["samples_mb_s"] = samples
        result["median_mb_s"] = {
            name: {d: median(v) for d, v in by_dir.items()} for name, by_dir in samples.items()
        }
        return result
    finally:
        sink.close()


def run(
    procs: Procs, root: Path, *, quick: bool, levers: list[str] | None = None
) -> dict[str, Any]:
    size = (16 if quick else 64) * MIB
    runs = 3 if quick else 5
    sshd, why = openssh.start_if_present(procs, root / "sshd")
    install = Installation.start(procs, root / "allowhelp", levers)
    try:
        result = asyncio.run(_measure(install, sshd, procs, size, runs))
    finally:
        install.close()
    result["levers"] = levers or []
    result["openssh_missing"] = why
    return result
