"""The screen relay with and without its recorder, same run (issue #18).

    .venv/bin/python -m bench.screenrec [--mib 64] [--runs 5]

Two installations on 127.0.0.1, each a real broker and agent whose screen
program is :mod:`bench.rfbsink` (an RFB server that costs next to nothing, as
in ``bench.bulk``), so the figure is the relay's:

``recorded``    the broker as shipped: every screen session recorded
                (``audit/rfb_recording.py``) to ``DATA/recordings/ID.rfb``;
``unrecorded``  the same broker started through ``bench.launch --no-screen-recording``:
                the screen relay built without a recorder.

Each run opens a fresh screen session on each (so no recording reaches its
cap), takes 4 MiB as warm-up, then measures: download (whole-screen Raw
updates, noVNC's request/update loop) and upload (256 KiB clipboard messages,
then the sink's Bell), and the broker's CPU milliseconds per MB moved: the whole
process, and its main thread alone (the event loop: the relay's hot path). The
paths interleave (recorded, unrecorded, unrecorded, recorded, ...) so load
from the rest of the machine hits both; the table shows medians. The recorded
side's file is checked to hold what went down.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.bulk import MIB, SINK, cpu_seconds, download, open_rfb, open_screen, upload
from bench.common import CLK_TCK, ROOT, Procs, dump_json, fmt, log, machine, median, table, versions
from bench.stack import Installation

RECORDED, UNRECORDED = "recorded", "unrecorded"
LEVERS = {RECORDED: [], UNRECORDED: ["--no-screen-recording"]}


def loop_seconds(pid: int) -> float:
    """CPU seconds of the broker's main thread: its event loop, the relay's hot path
    (the recording writers, the audit and store threads are other threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def one_run(install: Installation, size: int) -> dict[str, float]:
    """One fresh screen session: MB/s down and up, broker CPU ms per MB each way
    (the whole process, and its event loop's thread alone)."""
    out: dict[str, float] = {}
    pid = install.broker.pid
    async with AsyncExitStack() as stack:
        stream = await open_screen(install, stack)
        init = await open_rfb(stream)
        await download(stream, init, 4 * MIB)  # warm-up, not counted
        for direction, move in (("down", download), ("up", upload)):
            before, loop_before = cpu_seconds({"broker": pid})["broker"], loop_seconds(pid)
            nbytes, seconds = await move(stream, init, size)
            after, loop_after = cpu_seconds({"broker": pid})["broker"], loop_seconds(pid)
            mb = nbytes / 1e6
            out[f"{direction}_mb_s"] = mb / seconds
            out[f"{direction}_broker_cpu_ms_per_mb"] = (after - before) * 1000 / mb
            out[f"{direction}_loop_cpu_ms_per_mb"] = (loop_after - loop_before) * 1000 / mb
    return out


def recorded_bytes(install: Installation) -> int:
    folder = install.broker.data / "recordings"
    return max((p.stat().st_size for p in folder.glob("*.rfb")), default=0)


async def measure(installs: dict[str, Installation], size: int, runs: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in installs}
    largest = 0
    for i in range(runs):
        order = list(installs) if i % 2 == 0 else list(reversed(installs))
        for name in order:
            samples[name].append(await one_run(installs[name], size))
        largest = max(largest, recorded_bytes(installs[RECORDED]))
        done = "; ".join(
            f"{n}: {s[-1]['down_mb_s']:.0f}/{s[-1]['up_mb_s']:.0f}" for n, s in samples.items()
        )
        log(f"run {i + 1}/{runs} (MB/s down/up) {done}")
    if largest < size:
        raise RuntimeError(f"the recorded side wrote {largest} bytes for {size} moved")
    if recorded_bytes(installs[UNRECORDED]):
        raise RuntimeError("the unrecorded side wrote a screen recording")
    keys = samples[RECORDED][0].keys()
    medians = {n: {k: median([s[k] for s in runs_]) for k in keys} for n, runs_ in samples.items()}
    return {"samples": samples, "median": medians, "largest_recording_bytes": largest}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.screenrec", description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="MiB moved each way per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "screenrec.json")
    args = parser.parse_args()
    if not 1 <= args.mib <= 400:
        parser.error("--mib must be between 1 and 400 (a recording's default cap is 512 MiB)")
    env = {"ALLOWHELP_TEST_SCREEN_COMMAND": shlex.join(SINK)}
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="allowhelp-screenrec-bench-") as tmp:
        root = Path(tmp)
        try:
            installs = {
                name: Installation.start(procs, root / name, levers, agent_env=env)
                for name, levers in LEVERS.items()
            }
            result = asyncio.run(measure(installs, args.mib * MIB, args.runs))
        finally:
            procs.close()
    medians = result["median"]
    base = medians[UNRECORDED]
    rows = [
        [
            name,
            fmt(m["down_mb_s"]),
            fmt(m["down_mb_s"] / base["down_mb_s"], 2),
            fmt(m["up_mb_s"]),
            fmt(m["up_mb_s"] / base["up_mb_s"], 2),
            fmt(m["down_broker_cpu_ms_per_mb"], 2),
            fmt(m["up_broker_cpu_ms_per_mb"], 2),
            fmt(m["down_loop_cpu_ms_per_mb"], 2),
            fmt(m["up_loop_cpu_ms_per_mb"], 2),
        ]
        for name, m in medians.items()
    ]
    print(f"Screen relay, {args.mib} MiB each way x {args.runs} runs, interleaved, medians")
    print(
        table(
            [
                "broker",
                "down MB/s",
                "ratio",
                "up MB/s",
                "ratio",
                "CPU ms/MB down",
                "up",
                "loop thread down",
                "up",
            ],
            rows,
        )
    )
    dump_json(
        args.out,
        {
            "benchmark": "screenrec",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mib_each_way": args.mib,
            "runs": args.runs,
            "sink": shlex.join(SINK),
            **result,
            "machine": machine(),
            "versions": versions(),
        },
    )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
