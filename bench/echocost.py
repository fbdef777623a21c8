"""Keystroke echo: latency and CPU per round trip, this tree against a baseline (issue #19).

    python -m bench.echocost [--baseline REF]... [--rounds N] [--count N] [--copies N]
        [--json OUT]

Installations on 127.0.0.1, each a broker and an enrolled agent started as
``bench.stack`` starts them (``bench.launch``, no levers), one from a copy of
this working tree's ``allowhelp/`` package and one from each baseline commit
REF (``git archive``, as ``bench.agentmem``; default ``HEAD``; ``--baseline``
again for more, e.g. one per commit of a series): ``PYTHONPATH`` puts the copy
first and ``PYTHONSAFEPATH`` keeps the checkout's own package out.

Each installation opens one consented shell, runs ``stty raw -echo; cat`` in it
and keeps it for the whole run. A round drives ``--count`` keystrokes through
each installation's terminal WebSocket (``bench.latency``: one byte sent, wait
for it back), one installation at a time, in an order that alternates between
rounds, so the machine's load meets all of them. Per round and installation:
p50 and p99 of the round trip, and the broker's and the agent's CPU (all their
threads' ``schedstat`` run time) over those round trips only, divided by their
number. The table gives the medians over the rounds.

Two installations of the same code can differ by several µs and tens of µs of
p50 for the whole run (§7k of docs/benchmarks.md: an A/A run of this tree against
its own ``HEAD``). ``--copies N`` installs each code N times: a second table pools
the copies of each code, and the copies' own rows show the drift to beat.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from websockets.sync.client import ClientConnection, connect

from bench.agentmem import copy_package
from bench.common import PY, ROOT, Procs, dump_json, log, percentile, table
from bench.latency import WARMUP, _ws_wait, round_trips
from bench.stack import Installation

T = TypeVar("T")

FIGURES = ("p50_ms", "p99_ms", "broker_us", "agent_us")


def cpu_seconds(pid: int) -> float:
    """CPU time of all of ``pid``'s threads, in nanoseconds' resolution (the first
    field of each thread's ``schedstat``): utime+stime counts in 10 ms ticks, too
    coarse for a round of a few hundred milliseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def cpu_of(pids: list[int]) -> float:
    """:func:`cpu_seconds` of each process still there, summed."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # gone
            continue
    return total


class Measured:
    """A terminal driven one byte at a time (``trip``: that many round trips, in
    seconds each) and the processes whose CPU counts: the server's and the agent's,
    listed anew each round (workers come and go)."""

    def __init__(
        self,
        name: str,
        trip: Callable[[int], list[float]],
        server: Callable[[], list[int]],
        agent: Callable[[], list[int]],
    ) -> None:
        self.name, self.trip, self.server, self.agent = name, trip, server, agent
        self.rounds: list[dict[str, float]] = []

    def round(self, count: int) -> dict[str, float]:
        server, agent = self.server(), self.agent()
        s0, a0 = cpu_of(server), cpu_of(agent)
        samples = self.trip(count)
        s1, a1 = cpu_of(server), cpu_of(agent)
        trips = count + WARMUP
        ms = [s * 1000 for s in samples]
        row = {
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "broker_us": 1e6 * (s1 - s0) / trips,  # the server: our broker, or theirs
            "agent_us": 1e6 * (a1 - a0) / trips,
        }
        self.rounds.append(row)
        return row

    def medians(self) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in self.rounds) for key in FIGURES}


class Side(Measured):
    """An installation of ours, its consented shell's terminal open on ``ws``."""

    def __init__(self, name: str, install: Installation, ws: ClientConnection) -> None:
        agent = install.agent.proc
        if agent is None:
            raise RuntimeError("the agent is not running")
        broker = install.broker.pid
        super().__init__(name, self.trips, lambda: [broker], lambda: [agent.pid])
        self.install, self.ws = install, ws

    def trips(self, count: int) -> list[float]:
        return round_trips(lambda: self.ws.send(b"k"), lambda: self.ws.recv(timeout=10), count)


def start_side(
    procs: Procs, stack: ExitStack, folder: Path, ref: str | None, python: str = PY
) -> Side:
    """This tree (``ref`` None) or commit ``ref`` installed on ``python``, its shell
    running ``cat``."""
    name = "tree" if ref is None else f"baseline {ref}"
    log(f"starting {name} in {folder}")
    copy = folder / "code"
    copy_package("tree" if ref is None else "baseline", ref or "HEAD", copy)
    (copy / "web").symlink_to(ROOT / "web")  # the console's files (built, not in git)
    env = {"PYTHONPATH": os.pathsep.join((str(copy), str(ROOT))), "PYTHONSAFEPATH": "1"}
    install = Installation.start(
        procs, folder / "run", agent_env=env, broker_env=env, python=python
    )
    stack.callback(install.close)
    session_id = install.consented_shell("echo cost benchmark")
    stack.callback(install.end, session_id)
    ws = stack.enter_context(
        connect(
            **install.ws_args(session_id, query="?cols=100&rows=30"),
            compression=None,
            max_size=None,
        )
    )
    ws.send(b"stty raw -echo; printf '\\122EADY'; cat\n")
    _ws_wait(ws, b"READY")
    return Side(name, install, ws)


def run(root: Path, refs: list[str], rounds: int, count: int, copies: int = 1) -> dict[str, Any]:
    """Each code installed ``copies`` times (``tree #2``, ...): the copies of one
    code differ only by chance (ports, process ids, hash seeds, where the kernel
    puts them), which shows how far two installations of one code drift apart."""
    procs = Procs()
    try:
        with ExitStack() as stack:
            codes: dict[str, list[Side]] = {}  # each code's copies, by the code's name
            for i, ref in enumerate([None, *refs]):
                code = "tree" if ref is None else f"baseline {ref}"
                code += f" ({i})" if code in codes else ""  # a ref given twice
                codes[code] = []
                for copy in range(copies):
                    side = start_side(procs, stack, root / f"side{i}-{copy}", ref)
                    side.name = code + (f" #{copy + 1}" if copies > 1 else "")
                    codes[code].append(side)
            sides = [side for copies_of in codes.values() for side in copies_of]
            result = {"baselines": refs, "copies": copies, **interleaved(sides, rounds, count)}
            if copies > 1:
                result["median_by_code"] = by_code(codes)
            return result
    finally:
        procs.close()


def by_code(codes: dict[str, list[Side]]) -> dict[str, dict[str, float]]:
    """Medians over every round of every copy of each code."""
    pooled = {}
    for code, copies in codes.items():
        rows = [row for side in copies for row in side.rounds]
        pooled[code] = {key: statistics.median(row[key] for row in rows) for key in FIGURES}
    return pooled


def interleaved(sides: Sequence[Measured], rounds: int, count: int) -> dict[str, Any]:
    """All warmed up, then ``rounds`` rounds of ``count`` round trips each, one side
    at a time, each round starting with another side and going the other way every
    other round, so the machine's load meets all of them; the figures by side.
    (Rotated every second round and reversed every other: rotating and reversing
    in the same round would put the same side first every round when there are two.)"""
    for side in sides:
        side.trip(500)
    for n in range(rounds):
        for side in in_turn(sides, n):
            row = side.round(count)
            log(f"round {n + 1}/{rounds} {side.name}: " + fmt_row(row))
    return {
        "rounds": rounds,
        "round_trips_per_round": count,
        "median": {side.name: side.medians() for side in sides},
        "per_round": {side.name: side.rounds for side in sides},
    }


def in_turn(sides: Sequence[T], n: int) -> list[T]:
    """Round ``n``'s order: rotated every second round, reversed every other."""
    turn = n // 2 % len(sides)
    order = [*sides[turn:], *sides[:turn]]
    return order if n % 2 == 0 else order[::-1]


def fmt(key: str, value: float) -> str:
    return f"{value:.3f}" if key.endswith("_ms") else f"{value:.0f}"


def fmt_row(row: dict[str, float]) -> str:
    return " ".join(f"{key}={fmt(key, row[key])}" for key in FIGURES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.echocost", description="keystroke echo: this tree against a baseline"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="REF",
        help="git ref of a baseline (HEAD); give it again for more baselines in the same run",
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds (10)")
    parser.add_argument("--count", type=int, default=3000, help="round trips per round (3000)")
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="installations of each code (1); two or more show how far copies drift apart",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.count < 10 or args.copies < 1:
        parser.error("--rounds and --copies must be at least 1 and --count at least 10")
    refs = args.baseline or ["HEAD"]
    for ref in refs:
        known = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        if known.returncode != 0:
            parser.error(f"--baseline {ref}: not a commit of this checkout")
    with tempfile.TemporaryDirectory(prefix="echocost-") as tmp:
        result = run(Path(tmp), refs, args.rounds, args.count, args.copies)
    for key in ("median", "median_by_code"):
        medians: dict[str, dict[str, float]] = result.get(key, {})
        rows = [[code, *(fmt(k, row[k]) for k in FIGURES)] for code, row in medians.items()]
        if rows:
            print(table(["code", *FIGURES], rows))
    if args.json is not None:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
