"""Keystroke round trip: one byte through the terminal WebSocket to a PTY running ``cat`` and back.

allowhelp: a consented shell, ``stty raw -echo; cat`` in it, then a blocking
(sync) WebSocket client sends one byte and waits for it to come back, ≥ 2000
times. OpenSSH baseline, in the same run: ``ssh -tt host 'stty raw -echo; cat'``
driven the same way through blocking pipes. Both drivers are equally thin:
one write, one read per round trip.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from bench import openssh
from bench.common import Procs, log, median, percentile
from bench.stack import Installation

WARMUP = 100


def _ws_wait(ws: ClientConnection, marker: bytes, timeout: float = 20) -> None:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(frame, bytes)
        seen += frame


def round_trips(
    send: Callable[[], object], receive: Callable[[], object], count: int
) -> list[float]:
    """Seconds per keystroke echoed back, after ``WARMUP`` uncounted ones."""
    samples: list[float] = []
    for i in range(WARMUP + count):
        t0 = time.perf_counter()
        send()
        got = receive()
        t1 = time.perf_counter()
        if got != b"k":
            raise RuntimeError(f"expected the keystroke back, got {got!r}")
        if i >= WARMUP:
            samples.append(t1 - t0)
    return samples


def allowhelp_rtts(install: Installation, count: int) -> list[float]:
    session_id = install.consented_shell("latency benchmark")
    try:
        with connect(
            **install.ws_args(session_id, query="?cols=100&rows=30"),
            compression=None,
            max_size=None,
        ) as ws:
            ws.send(b"stty raw -echo; printf '\\122EADY'; cat\n")
            _ws_wait(ws, b"READY")
            return round_trips(lambda: ws.send(b"k"), lambda: ws.recv(timeout=10), count)
    finally:
        install.end(session_id)


def ssh_rtts(sshd: openssh.Sshd, count: int) -> list[float]:
    proc = subprocess.Popen(
        [*sshd.ssh_argv("-tt"), "stty raw -echo; printf READY; cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdin is not None and proc.stdout is not None
    inp, out = proc.stdin.fileno(), proc.stdout.fileno()
    try:
        seen = b""
        while b"READY" not in seen:
            data = os.read(out, 4096)
            if not data:
                raise ConnectionError("ssh -tt ended early")
            seen += data
        return round_trips(lambda: os.write(inp, b"k"), lambda: os.read(out, 16), count)
    finally:
        proc.kill()
        proc.wait(10)


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


def run(
    procs: Procs, root: Path, *, quick: bool, levers: list[str] | None = None
) -> dict[str, Any]:
    count = 2000
    runs = 1 if quick else 3
    sshd, why = openssh.start_if_present(procs, root / "sshd")
    install = Installation.start(procs, root / "allowhelp", levers)
    per_run: list[dict[str, Any]] = []
    try:
        for i in range(runs):
            row: dict[str, Any] = {"allowhelp": summary(allowhelp_rtts(install, count))}
            if sshd is not None:
                row["ssh -tt"] = summary(ssh_rtts(sshd, count))
            per_run.append(row)
            log(f"latency run {i + 1}/{runs} done")
    finally:
        install.close()
    medians: dict[str, dict[str, float]] = {}
    for name in per_run[0]:
        medians[name] = {key: median([r[name][key] for r in per_run]) for key in per_run[0][name]}
    return {
        "round_trips_per_run": count,
        "runs": runs,
        "per_run": per_run,
        "median": medians,
        "levers": levers or [],
        "openssh_missing": why,
    }
