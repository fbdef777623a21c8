"""What a connected agent costs the broker in memory, by allocation site (tracemalloc).

A separate pass (tracemalloc slows the broker down several times; the fleet
figures never use it): a broker started through this launcher traces Python
allocations; SIGUSR2 writes the live allocations grouped by source line to a
JSON file. Two snapshots, with no agent and with N agents online, give the
bytes per agent of each allocation site. RSS per agent also includes what
Python does not trace (OpenSSL contexts, socket buffers are kernel memory and
not counted in RSS at all, malloc slack).

    python -m bench.memory OUT.json broker ARGS...   # bench.launch, with tracemalloc
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

from bench import fleet
from bench.common import PY, Procs, log
from bench.launch import main as launch_main

FRAMES = 8


def _dump(out: Path) -> None:
    snap = tracemalloc.take_snapshot()
    by_line: dict[str, int] = {}
    by_file: dict[str, int] = {}
    for stat in snap.statistics("traceback"):
        frames = list(stat.traceback)
        # attribute to the innermost frame, and to the first allowhelp frame on the way out
        leaf = frames[-1] if frames else None
        owner = next((f for f in reversed(frames) if "allowhelp/" in f.filename), None)
        key = f"{_short(leaf.filename)}:{leaf.lineno}" if leaf else "?"
        if owner is not None:
            key += f" (via {_short(owner.filename)}:{owner.lineno})"
        by_line[key] = by_line.get(key, 0) + stat.size
        fname = _short(leaf.filename) if leaf else "?"
        by_file[fname] = by_file.get(fname, 0) + stat.size
    out.write_text(json.dumps({"time": time.time(), "by_line": by_line, "by_file": by_file}))


def _short(path: str) -> str:
    for anchor in ("site-packages/", "python3.11/", "/main/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    return path


def traced_main(argv: list[str]) -> int:
    out = Path(argv[0])
    tracemalloc.start(FRAMES)

    def on_usr2(signum: int, frame: FrameType | None) -> None:
        _dump(out)

    signal.signal(signal.SIGUSR2, on_usr2)
    return launch_main(argv[1:])


def _diff(before: dict[str, int], after: dict[str, int], n: int, top: int) -> list[Any]:
    keys = set(before) | set(after)
    rows = [(k, (after.get(k, 0) - before.get(k, 0)) / n) for k in keys]
    rows.sort(key=lambda kv: -kv[1])
    return [(k, round(v)) for k, v in rows[:top]]


def run(procs: Procs, root: Path, *, n: int = 1000) -> dict[str, Any]:
    """Fill n agents into a traced broker; bytes per agent by file and by line."""
    out = root / "tracemalloc.json"
    snaps: list[dict[str, Any]] = []

    def snapshot(pid: int) -> dict[str, Any]:
        before = out.stat().st_mtime_ns if out.exists() else 0
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and out.stat().st_mtime_ns > before:
                time.sleep(0.5)
                data: dict[str, Any] = json.loads(out.read_text())
                return data
            time.sleep(0.2)
        raise TimeoutError("no tracemalloc snapshot")

    result = fleet.one_size(
        procs,
        root,
        n,
        quick=True,
        levers=None,
        launcher=[PY, "-m", "bench.memory", str(out)],
        on_ready=lambda pid: snaps.append(snapshot(pid)),
        on_filled=lambda pid: snaps.append(snapshot(pid)),
    )
    if len(snaps) < 2:
        raise RuntimeError("the traced fill did not complete")
    total = (sum(snaps[1]["by_line"].values()) - sum(snaps[0]["by_line"].values())) / n
    log(f"tracemalloc: {total / 1024:.1f} KiB traced per agent")
    return {
        "agents": n,
        "traced_kib_per_agent": total / 1024,
        "rss_kib_per_agent_traced_run": result.get("broker_rss_per_agent_kib"),
        "by_file_bytes_per_agent": _diff(snaps[0]["by_file"], snaps[1]["by_file"], n, 15),
        "by_line_bytes_per_agent": _diff(snaps[0]["by_line"], snaps[1]["by_line"], n, 25),
    }


if __name__ == "__main__":
    sys.exit(traced_main(sys.argv[1:]))
