"""MeshCentral's side of the peers bench: keystrokes, bulk, screen, memory, measured as ours are."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Procs, log, proc_stat, tree_stat
from bench.latency import round_trips
from bench.peers.meshclient import FRAME_TIMER_MS, MeshDesktop, MeshTerminal, relay
from bench.peers.meshserver import MeshServer
from bench.peers.ours import ScreenRun

BATCH = 25  # meshagent processes started at once (each makes its certificate on first start)


def keystrokes(server: MeshServer, node: str, count: int) -> list[float]:
    with relay(server, node, 1) as ws:
        term = MeshTerminal(ws)
        term.send(b"stty raw -echo; printf '\\122EADY'; cat\n")
        term.until(b"READY")
        return round_trips(lambda: term.send(b"k"), term.recv, count)


def bulk_download(server: MeshServer, node: str, size: int) -> float:
    """MB/s of ``size`` bytes from the agent's raw PTY through the relay."""
    with relay(server, node, 1, cols=200, rows=50) as ws:
        term = MeshTerminal(ws)
        term.send(
            f"stty raw -echo; printf '\\102EGIN-'; head -c {size} /dev/zero | tr '\\000' a;"
            " printf '\\105ND-'\n".encode()
        )
        seen = b""
        while b"BEGIN-" not in seen:
            seen = seen[-64:] + term.recv(30)
        t0 = time.perf_counter()
        rest = seen.split(b"BEGIN-", 1)[1]
        count, tail = 0, b""
        while True:
            window = tail + rest
            at = window.find(b"END-")
            if at >= 0:
                count += at - len(tail)
                break
            count += len(rest)
            tail = window[-8:]
            rest = term.recv(60)
        took = time.perf_counter() - t0
    if count != size:
        raise RuntimeError(f"MeshCentral's terminal delivered {count} bytes, expected {size}")
    return size / took / 1e6


def screen_run(
    server: MeshServer, node: str, warmup: float, seconds: float, via: int | None = None
) -> ScreenRun:
    """From opening the desktop tunnel to the first decoded tile; then tiles for
    ``seconds`` after ``warmup``, one update = the tiles of one frame-timer tick.
    ``via``: the page's side (login, control and relay sockets) through 127.0.0.1:``via``."""
    if via is not None:
        server = dataclasses.replace(server, port=via)
    start = time.monotonic()
    with relay(server, node, 2) as ws:
        desktop = MeshDesktop(ws)
        first_at: float | None = None
        for tile in desktop.tiles(start + 30):
            first_at = tile.at
            break
        if first_at is None:
            raise RuntimeError("MeshCentral sent no picture in 30 s")
        first = first_at - start
        for _ in desktop.tiles(time.monotonic() + warmup):
            pass
        updates, last, t1 = 0, 0.0, time.monotonic()
        bytes0 = desktop.received
        for tile in desktop.tiles(t1 + seconds):
            if tile.at - last > FRAME_TIMER_MS / 2000:
                updates += 1
            last = tile.at
        took = time.monotonic() - t1
        got = desktop.received - bytes0
    return ScreenRun(first, 0.0, updates, took, got)


def _rss_kib(pid: int) -> int:
    return proc_stat(pid).rss_kib


def _server_rss_kib(pid: int) -> int:
    """The server and its children (meshaccelerator.js workers)."""
    return tree_stat(pid).rss_kib


def server_kib_per_agent(procs: Procs, root: Path, count: int, settle_s: float) -> dict[str, Any]:
    """A fresh MeshCentral, ``count`` meshagent processes each in its own folder; its RSS
    (with its meshaccelerator children) after a forced full GC of the server process,
    idle, less the same before any agent, per agent."""
    server = MeshServer(procs, root / "mesh-memory" / "data")
    server.configure()
    server.start()
    try:
        server.add_group()
        msh = server.msh()
        time.sleep(settle_s)
        gc_forced = server.collect_garbage()
        base = _server_rss_kib(server.pid)
        binary = root / "mesh-memory" / "meshagent"
        for first in range(0, count, BATCH):
            upto = min(count, first + BATCH)
            for i in range(first, upto):
                server.start_agent(root / "mesh-memory" / f"agent{i:04d}", msh, link_from=binary)
            server.wait_agents(upto, 180)
            log(f"meshcentral: {upto}/{count} agents online")
        time.sleep(settle_s)
        gc_forced = server.collect_garbage() and gc_forced
        after = _server_rss_kib(server.pid)
        agent_rss = [_rss_kib(p.pid) / 1024 for p in server.agents if p.poll() is None]
        return {
            "kib_per_agent": (after - base) / count,
            "agents": count,
            "gc_forced": gc_forced,
            "agent_rss_mb_median": statistics.median(agent_rss) if agent_rss else None,
        }
    finally:
        server.stop()
