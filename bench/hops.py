"""Keystroke echo, leg by leg: where each product's round trip goes (issue #19).

    python -m bench.hops [--rounds N] [--count N] [--mesh-recording] [--json OUT]

``bench.peercost`` gives each product's round trip and its CPU; this cuts the
round trip into its legs by the kernel's own wake-ups (``perf record -e
sched:sched_waking -a``, so it needs ``perf`` and root; ``sched_waking`` fires
in the waker's context, where ``sched_wakeup`` often fires in the woken CPU's
interrupt and names no waker). Every leg ends when
the next process on the path is woken: a keystroke wakes the server, the server
wakes the agent, the agent wakes the terminal (the PTY's kernel worker), the
terminal wakes the agent with the echo, the agent wakes the server, the server
wakes the client. So each leg is one process's turn, from being woken (its
wake-up latency included) to waking the next:

``server_in``  the server, from the keystroke to the agent;
``agent_in``   the agent, from the keystroke to the PTY;
``terminal``   the PTY, ``cat`` and the kernel's worker, to the agent;
``agent_out``  the agent, from the echo to the server;
``server_out`` the server, from the echo to the client;
``client``     the client (the same Python for both), from the echo to the next keystroke.

Same products as ``bench.peercost`` (this tree, MeshCentral with its agent,
and with ``--mesh-recording`` a MeshCentral that records its terminal), one at
a time, in an order that alternates between rounds. Tracing slows every hop a
little (all products alike): compare the products, not these legs with
``peercost``'s round trips. Medians of each round's medians.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Procs, dump_json, log, median, table
from bench.echocost import Measured, in_turn
from bench.peercost import products

MIN_SEEN = 0.5  # of a round's trips, each leg seen with both its ends (counted in the JSON)
PERF_STARTS = 1.5  # s for ``perf record -a`` to start (without a wait most trips went unseen)
LEGS = ("server_in", "agent_in", "terminal", "agent_out", "server_out", "client")
# ``perf script -F comm,tid,pid,cpu,time,trace`` for a sched_waking: the waker
# (its name, which may hold spaces, and pid/tid), then the woken thread
WAKEUP = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+comm=(.*?)\spid=(\d+)\s")
# The terminal's side: the kernel's workers (a PTY hands its bytes over in one)
# and the program at the far end, for both products
TERMINAL = ("kworker/", "cat", "sh", "bash")


@dataclass(frozen=True)
class Wake:
    at: float  # seconds
    waker: int  # thread ids
    wakee: int
    waker_name: str
    wakee_name: str


def wakeups(lines: Iterable[str]) -> list[Wake]:
    found = []
    for line in lines:
        match = WAKEUP.match(line)
        if match:
            waker_name, _, waker, at, wakee_name, wakee = match.groups()
            found.append(Wake(float(at), int(waker), int(wakee), waker_name, wakee_name))
    return found


def _terminal(name: str) -> bool:
    return name.startswith(TERMINAL[0]) or name in TERMINAL[1:]


@dataclass(frozen=True)
class OnThePath:
    """The threads a product's round trip passes: the client's, the server's and
    the agent's; the terminal's are known by name (``TERMINAL``)."""

    client: frozenset[int]
    client_main: int
    server: frozenset[int]
    agent: frozenset[int]

    def ends(self, leg: int, wake: Wake) -> bool:
        """Whether ``wake`` ends leg number ``leg`` of ``LEGS`` (the last, the
        client's, ends with the next keystroke: the client's main thread waking the
        server)."""
        if leg == 0:
            return wake.waker in self.server and wake.wakee in self.agent
        if leg == 1:
            return wake.waker in self.agent and _terminal(wake.wakee_name)
        if leg == 2:
            return wake.wakee in self.agent and _terminal(wake.waker_name)
        if leg == 3:
            return wake.waker in self.agent and wake.wakee in self.server
        if leg == 4:
            return wake.waker in self.server and wake.wakee in self.client
        return wake.waker == self.client_main and wake.wakee in self.server


@dataclass
class Legs:
    """Each leg's durations (seconds, by the names of ``LEGS``), from the trips in
    which both its ends were seen, and how many keystrokes were seen."""

    found: dict[str, list[float]]
    keystrokes: int = 0


def legs(wakes: Iterable[Wake], path: OnThePath) -> Legs:
    """Each wake-up that ends a leg at or after the one under way ends that leg;
    one that ends none of them is passed over (timers, other threads).

    ``sched_waking`` fires only for a thread that sleeps: one still running when
    its bytes come is not woken, and that boundary is not seen. So a wake-up may
    end a leg further on: the legs in between have an end unseen and are not
    counted for that trip (the others are). One that ends an earlier leg means
    the trip's own end went unseen (the next one has begun): what was seen of it
    counts, and the next goes on from there."""
    result = Legs({name: [] for name in LEGS})
    last = len(LEGS) - 1
    leg = last  # the leg under way: waiting for a first keystroke
    began: list[float | None] = [None] * (len(LEGS) + 1)  # each leg's start; last: its end
    for wake in wakes:
        ends = [other for other in range(len(LEGS)) if path.ends(other, wake)]
        if not ends:
            continue
        later = [other for other in ends if other >= leg]
        if not later:  # the trip's own end went unseen: the next trip is under way
            _count(result, began)
            began = [None] * (len(LEGS) + 1)
            began[ends[0] + 1] = wake.at
            leg = ends[0] + 1
            continue
        end = later[0]
        for unseen in range(leg + 1, end + 1):
            began[unseen] = None
        began[end + 1] = wake.at
        if end < last:
            leg = end + 1
            continue
        _count(result, began)  # a trip ends with the next keystroke, which starts the next
        result.keystrokes += 1
        began = [wake.at] + [None] * len(LEGS)
        leg = 0
    return result


def _count(result: Legs, began: list[float | None]) -> None:
    """The legs of one trip whose two ends were seen."""
    for i, name in enumerate(LEGS):
        start, stop = began[i], began[i + 1]
        if start is not None and stop is not None:
            result.found[name].append(stop - start)


def threads(pids: Iterable[int]) -> frozenset[int]:
    found: set[int] = set()
    for pid in pids:
        try:
            found.update(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
    return frozenset(found)


def traced_round(product: Measured, count: int, folder: Path, client: int) -> dict[str, float]:
    """``count`` round trips (and ``bench.latency``'s uncounted warm-up ones before
    them) with every wake-up recorded; each leg's median (µs) and how many times
    each was seen whole."""
    data = folder / f"{product.name}.perf"
    path = OnThePath(threads([client]), client, threads(product.server()), threads(product.agent()))
    errors = folder / "perf.err"
    with errors.open("wb") as err:
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "sched:sched_waking", "-a", "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        time.sleep(PERF_STARTS)
        if perf.poll() is not None:
            raise RuntimeError(f"perf record stopped: {errors.read_text(errors='replace')[-400:]}")
        product.trip(count)
    finally:
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,pid,cpu,time,trace"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    data.unlink(missing_ok=True)
    if script.returncode != 0:
        raise RuntimeError(f"perf script failed: {script.stderr[-400:]}")
    traced = legs(wakeups(script.stdout.splitlines()), path)
    seen = {leg: len(traced.found[leg]) for leg in LEGS}
    if min(seen.values()) < MIN_SEEN * count:
        raise RuntimeError(f"{product.name}: of {count} round trips, each leg seen {seen}")
    row = {leg: 1e6 * median(traced.found[leg]) for leg in LEGS}
    row.update({f"{leg}_seen": float(seen[leg]) for leg in LEGS})
    row["keystrokes"] = traced.keystrokes
    return row


def run(root: Path, rounds: int, count: int, mesh_recording: bool) -> dict[str, Any]:
    procs = Procs()
    try:
        with ExitStack() as stack:
            sides = products(procs, stack, root, mesh_recording)
            for side in sides:
                side.trip(500)
            per_round: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
            for n in range(rounds):
                for side in in_turn(sides, n):
                    row = traced_round(side, count, root, os.getpid())
                    per_round[side.name].append(row)
                    log(f"round {n + 1}/{rounds} {side.name}: " + fmt(row))
            medians = {
                name: {leg: median([row[leg] for row in rows]) for leg in LEGS}
                for name, rows in per_round.items()
            }
            return {
                "rounds": rounds,
                "round_trips_per_round": count,
                "median_us": medians,
                "per_round_us": per_round,
            }
    finally:
        procs.close()


def fmt(row: dict[str, float]) -> str:
    return " ".join(f"{leg}={row[leg]:.0f}" for leg in LEGS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hops",
        description="keystroke echo, leg by leg, allowhelp against MeshCentral (needs perf, root)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds (6)")
    parser.add_argument("--count", type=int, default=2000, help="round trips per round (2000)")
    parser.add_argument("--mesh-recording", action="store_true", help="as bench.peercost")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.count < 100:
        parser.error("--rounds must be at least 1 and --count at least 100")
    if shutil.which("perf") is None or os.geteuid() != 0:
        parser.error("needs perf (Debian: linux-perf) and root, for the scheduler's trace points")
    with tempfile.TemporaryDirectory(prefix="hops-") as tmp:
        result = run(Path(tmp), args.rounds, args.count, args.mesh_recording)
    medians: dict[str, dict[str, float]] = result["median_us"]
    rows = [[name, *(f"{row[leg]:.0f}" for leg in LEGS)] for name, row in medians.items()]
    print(table(["product (µs)", *LEGS], rows))
    if args.json is not None:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
