"""The shell's download path and its recorder: MB/s and the broker's CPU per MB (issue #19).

    .venv/bin/python -m bench.shellrec [--mib 64] [--runs 3] [--profile] --json FILE

One installation on 127.0.0.1 (a real broker and agent), one consented shell,
its terminal WebSocket as a byte pipe (``bench.throughput.raw_terminal``: the
PTY in raw mode). Two kinds of output go down, because the recorder's cost
depends on what it escapes:

``plain``  ``head -c N /dev/zero | tr '\\000' a`` (the throughput section's): no
           byte that JSON escapes;
``log``    colored log lines (escape sequences, quotes, a backslash, newlines),
           what a technician tails or cats.

Per run: MB/s, and the broker's CPU milliseconds per MB, the whole process and
its main thread alone (the event loop; the recording's writer threads are
others). ``--profile`` adds a py-spy pass (not measured) during ``log``
downloads and the share of the broker's samples under the recorder.

To compare two trees in the same session, run it in each, alternately (the
file is bench-only; copy it into the other tree)::

    cd TREE && PYTHONPATH=TREE .venv/bin/python -m bench.shellrec --json OUT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, Procs, log, median, proc_stat
from bench.pyspy import Profiler, summarise
from bench.stack import Installation
from bench.throughput import MIB, TerminalPipe, raw_terminal

LOG_LINE = r"\033[32mINFO\033[0m 12:00:01 served \"GET /api/v1/agents\" in 12 ms from C:\\\\temp"
SOURCES = {
    "plain": "head -c {size} /dev/zero | tr '\\000' a",
    "log": f"yes $'{LOG_LINE}' | head -c {{size}}",
}
RECORDER = ("audit/recording.py", "audit/cast_writer.py", "audit/rfb_writer.py")


def loop_seconds(pid: int) -> float:
    """CPU seconds of the broker's main thread (its event loop)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def download(pipe: TerminalPipe, source: str, size: int) -> float:
    """Seconds for ``size`` bytes of ``source`` to reach the WebSocket."""
    pipe.runs += 1
    tag = f"-{pipe.runs:04d}-"
    await pipe.command(
        f"printf '\\102EGIN{tag}'; {SOURCES[source].format(size=size)}; printf '\\105ND{tag}'"
    )
    t0, _, rest = await pipe._until(f"BEGIN{tag}".encode())
    t1, before, _ = await pipe._until(f"END{tag}".encode(), 300, rest)
    if before != size:
        raise RuntimeError(f"download delivered {before} bytes, expected {size}")
    return t1 - t0


async def measure(
    install: Installation, session_id: str, size: int, runs: int, spy: Path | None
) -> dict[str, Any]:
    """The runs, then (``spy``: py-spy's output) the profile pass on the same terminal."""
    pid = install.broker.pid
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in SOURCES}
    async with raw_terminal(install, session_id) as pipe:
        for _ in range(runs):
            for source in SOURCES:
                cpu0, loop0 = proc_stat(pid).cpu_s, loop_seconds(pid)
                seconds = await download(pipe, source, size)
                cpu1, loop1 = proc_stat(pid).cpu_s, loop_seconds(pid)
                mb = size / 1e6
                samples[source].append(
                    {
                        "mb_s": mb / seconds,
                        "broker_cpu_ms_per_mb": (cpu1 - cpu0) * 1000 / mb,
                        "loop_cpu_ms_per_mb": (loop1 - loop0) * 1000 / mb,
                    }
                )
            log(
                "; ".join(
                    f"{s}: {v[-1]['mb_s']:.0f} MB/s, broker {v[-1]['broker_cpu_ms_per_mb']:.2f}"
                    f" ms/MB (loop {v[-1]['loop_cpu_ms_per_mb']:.2f})"
                    for s, v in samples.items()
                )
            )
        profiled = None if spy is None else await profile(pipe, install, spy)
    medians = {s: {k: median([r[k] for r in v]) for k in v[0]} for s, v in samples.items()}
    return {"samples": samples, "median": medians, "profile": profiled}


async def profile(pipe: TerminalPipe, install: Installation, out: Path) -> dict[str, Any]:
    """py-spy on the broker during 10 s of ``log`` downloads (not a measured run)."""
    procs = Procs()
    try:
        spy = Profiler(procs, install.broker.pid, out)
        await asyncio.sleep(1)
        until = time.monotonic() + 10
        while time.monotonic() < until:
            await download(pipe, "log", 32 * MIB)
        spy.stop()
    finally:
        procs.close()
    return summarise(out, top=40) | {"recorder_percent": recorder_share(out)}


def recorder_share(raw: Path) -> dict[str, float]:
    """Percent of the broker's samples with the recorder's code on the stack: on the
    event loop (under ``Runner.run``) and in the writer threads."""
    total = loop = thread = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        if any(needle in stack for needle in RECORDER):
            if "Runner.run" in stack:
                loop += count
            else:
                thread += count
    pct = 100 / max(1, total)
    return {"on_loop": round(loop * pct, 1), "in_threads": round(thread * pct, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shellrec", description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="MiB per download")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="add a py-spy pass")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="ah-shellrec-"))
    install = Installation.start(procs, root / "allowhelp", [])
    try:
        session_id = install.consented_shell("shellrec")
        spy = root / "broker.raw" if args.profile else None
        result = asyncio.run(measure(install, session_id, args.mib * MIB, args.runs, spy))
        install.end(session_id)
    finally:
        install.close()
        procs.close()
        shutil.rmtree(root, ignore_errors=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median"], indent=1))


if __name__ == "__main__":
    main()
