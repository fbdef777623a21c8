"""Where the HTTPS route's extra time goes: py-spy on broker and agent, bulk by each route.

    .venv/bin/python -m bench.routes_profile [OUT.json]   # needs py-spy (bench only)

The ``routes`` section's pair (one broker, an agent per route), then for each
route and direction about 8 s of screen-channel transfers while py-spy samples
the broker and that route's agent (200 Hz, on-CPU samples only). Kept out of
the ``routes`` section: sampling slows what it watches, so its figures are
shares of the processes' time, never throughput. The table gives the share of
samples under ``wsbridge.py`` (the bridge's coroutines and all they call: the
WebSocket send and receive included) and with a ``wsbridge.py`` frame
innermost (the socketpair's own socket calls, C code counted in that frame),
and the share by component.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.bulk import download, open_rfb, open_screen, upload
from bench.common import ROOT, Procs, dump_json, log, table
from bench.pyspy import Profiler, available, summarise
from bench.routes import MIB, ROUTES, start_pair
from bench.stack import Installation

SECONDS = 8.0
STEP = 64 * MIB


def share_under(raw: Path, needle: str) -> tuple[float, float]:
    """Percent of py-spy's samples with a frame from a file whose path holds ``needle``
    anywhere in the stack (inclusive), and as the innermost Python frame (self: the
    socket calls a bridge coroutine makes are C code, counted in its frame)."""
    total = under = inner = 0
    if raw.exists():
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                total += int(count)
                under += int(count) if needle in stack else 0
                inner += int(count) if needle in stack.rsplit(";", 1)[-1] else 0
    if not total:
        return 0.0, 0.0
    return round(under * 100 / total, 1), round(inner * 100 / total, 1)


async def _profile(procs: Procs, root: Path, installs: dict[str, Installation]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        for route in ROUTES:
            install = installs[route]
            stream = await open_screen(install, stack)
            init = await open_rfb(stream)
            await download(stream, init, 4 * MIB)
            assert install.agent.proc is not None
            for direction, move in (("down", download), ("up", upload)):
                profs = {
                    "broker": Profiler(procs, install.broker.pid, root / f"{route}-{direction}-b"),
                    "agent": Profiler(
                        procs, install.agent.proc.pid, root / f"{route}-{direction}-a"
                    ),
                }
                await asyncio.sleep(1)  # py-spy attached
                moved, t_end = 0, time.monotonic() + SECONDS
                while time.monotonic() < t_end:
                    moved += (await move(stream, init, STEP))[0]
                for name, prof in profs.items():
                    prof.stop()
                    found = summarise(prof.out, top=12)
                    under, inner = share_under(prof.out, "wsbridge.py")
                    found["wsbridge_percent"] = under
                    found["wsbridge_self_percent"] = inner
                    out[f"{route}/{direction}/{name}"] = found
                log(f"profiled {route} {direction}: {moved // MIB} MiB moved")
    return out


def main(argv: list[str]) -> int:
    why = available()
    if why:
        print(why, file=sys.stderr)
        return 1
    out_path = Path(argv[0]) if argv else ROOT / "bench" / "results" / "routes-profile.json"
    tmp = Path(tempfile.mkdtemp(prefix="allowhelp-bench-"))
    procs = Procs()
    try:
        installs = start_pair(procs, tmp, [])
        try:
            result = asyncio.run(_profile(procs, tmp, installs))
        finally:
            installs["ssh"].close()
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    dump_json(out_path, result)
    rows = []
    for key, summary in result.items():
        comps = ", ".join(f"{k} {v}%" for k, v in summary["component_percent"][:5])
        bridge = f"{summary['wsbridge_percent']}% / {summary['wsbridge_self_percent']}%"
        rows.append([key, str(summary["samples"]), bridge, comps])
    heads = ["route/direction/process", "samples", "wsbridge.py under / self", "by component"]
    print(table(heads, rows))
    print(f"\nJSON: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
