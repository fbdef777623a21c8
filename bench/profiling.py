"""Where the time goes: py-spy samples of the broker and the agent, summarised.

Profiles are taken in separate passes, never during the measured runs: the
throughput and keystroke paths, and a 1,000-agent fill (see ``pyspy.py``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import fleet
from bench.common import Procs, log
from bench.pyspy import Profiler, available, summarise
from bench.stack import Installation
from bench.throughput import MIB, raw_terminal

__all__ = ["available", "run"]


def throughput_profile(procs: Procs, root: Path, levers: list[str] | None = None) -> dict[str, Any]:
    """Profile broker and agent during repeated 64 MiB downloads, then uploads."""
    install = Installation.start(procs, root / "allowhelp-profile", levers)
    out: dict[str, Any] = {}
    try:
        session_id = install.consented_shell("profile")

        async def go() -> None:
            async with raw_terminal(install, session_id) as pipe:
                for direction in ("down", "up"):
                    assert install.broker.proc is not None and install.agent.proc is not None
                    profs = {
                        "broker": Profiler(
                            procs, install.broker.pid, root / f"tp-{direction}-broker.raw"
                        ),
                        "agent": Profiler(
                            procs, install.agent.proc.pid, root / f"tp-{direction}-agent.raw"
                        ),
                    }
                    await asyncio.sleep(1)
                    t_end = time.monotonic() + 8
                    moved = 0
                    while time.monotonic() < t_end:
                        if direction == "down":
                            await pipe.download(32 * MIB)
                        else:
                            await pipe.upload(32 * MIB)
                        moved += 32 * MIB
                    for name, prof in profs.items():
                        prof.stop()
                        out[f"{direction}/{name}"] = summarise(prof.out)
                    log(f"profiled throughput {direction}: {moved // MIB} MiB moved")

        asyncio.run(go())
        install.end(session_id)
    finally:
        install.close()
    return out


def latency_profile(procs: Procs, root: Path, levers: list[str] | None = None) -> dict[str, Any]:
    """Profile broker and agent while keystrokes go round one at a time."""
    from bench.latency import allowhelp_rtts  # noqa: PLC0415 - latency is a sibling section

    install = Installation.start(procs, root / "allowhelp-latency-profile", levers)
    out: dict[str, Any] = {}
    try:
        assert install.agent.proc is not None
        profs = {
            "broker": Profiler(procs, install.broker.pid, root / "rtt-broker.raw"),
            "agent": Profiler(procs, install.agent.proc.pid, root / "rtt-agent.raw"),
        }
        rtts = allowhelp_rtts(install, 6000)
        for name, prof in profs.items():
            prof.stop()
            out[f"keystrokes/{name}"] = summarise(prof.out) | {"round_trips": len(rtts)}
        log("profiled keystroke round trips")
    finally:
        install.close()
    return out


def run(
    procs: Procs, root: Path, *, quick: bool, levers: list[str] | None = None
) -> dict[str, Any]:
    """Throughput (both directions), keystrokes (broker and agent) and a 1000-agent fill."""
    out = throughput_profile(procs, root, levers)
    procs.close()
    out |= latency_profile(procs, root, levers)
    procs.close()
    raw = root / "fleet-fill-broker.raw"
    n = 500 if quick else 1000
    fill = fleet.one_size(procs, root, n, quick=True, levers=levers, profile=raw)
    out[f"handshakes ({n}-agent fill)/broker"] = summarise(raw) | {
        "fill_seconds": fill.get("fill_seconds")
    }
    return out
