"""Keystroke echo: latency and CPU per round trip, allowhelp against MeshCentral (issue #19).

    python -m bench.peercost [--rounds N] [--count N] [--mesh-recording] [--python PATH]...
        [--json OUT]

The peers bench (``bench/run --only peers``) gives each product's round trip;
this says where it goes. One allowhelp installation of this tree
(``bench.echocost``'s, a consented shell running ``stty raw -echo; cat``) and
one MeshCentral server with one ``meshagent`` (``bench.peers``'s, its terminal
relay running the same), both on 127.0.0.1, driven by the same Python client
one at a time, in an order that alternates between rounds. Per round: p50 and
p99, and the CPU of each product's server and agent over those round trips only
(all their threads' ``schedstat``; MeshCentral's server with its
``meshaccelerator`` children, its agent without the shell and ``cat``, which
are the same program on both sides), divided by their number. Medians over the
rounds. ``--mesh-recording`` adds a MeshCentral that records its terminal (as ours
always does); ``--python PATH`` adds ours on that interpreter (a virtual
environment of it with ``allowhelp[broker]`` installed: Debian 13 and Ubuntu
24.04 run the packages on Python 3.13 and 3.12).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import PY, Procs, dump_json, table
from bench.echocost import FIGURES, Measured, fmt, interleaved, start_side
from bench.latency import round_trips
from bench.peers.meshclient import MeshTerminal, relay
from bench.peers.meshserver import MeshServer, install

SHELLS = ("sh", "bash", "cat")  # the program at the far end: the same for both


def descendants(pid: int) -> list[int]:
    """``pid`` and everything it started, depth first."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += descendants(int(child))
    return found


def _is_shell(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in SHELLS
    except OSError:
        return True


def _ours(procs: Procs, stack: ExitStack, root: Path, python: str = PY) -> Measured:
    name = "allowhelp" if python == PY else f"allowhelp on Python {python_version(python)}"
    if (root / name.replace(" ", "-")).exists():
        raise ValueError(f"{name} is measured already (--python twice?)")
    side = start_side(procs, stack, root / name.replace(" ", "-"), None, python)
    side.name = name
    return side


def python_version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def _theirs(procs: Procs, stack: ExitStack, root: Path, recording: bool = False) -> Measured:
    install()
    name = "meshcentral+recording" if recording else "meshcentral"
    server = MeshServer(procs, root / name / "data", recording=recording)
    server.configure()
    server.start()
    stack.callback(server.stop)
    server.add_group()
    agent = server.start_agent(root / name / "agent", server.msh())
    node = server.wait_agents(1, 120)[0]
    time.sleep(2)  # the agent settles after its first core exchange
    term = MeshTerminal(stack.enter_context(relay(server, node, 1)))
    term.send(b"stty raw -echo; printf '\\122EADY'; cat\n")
    term.until(b"READY")
    if recording and server.recorded_bytes() == 0:
        raise RuntimeError("MeshCentral's session recording wrote nothing")

    def trips(count: int) -> list[float]:
        return round_trips(lambda: term.send(b"k"), term.recv, count)

    def agents() -> list[int]:
        return [pid for pid in descendants(agent.pid) if not _is_shell(pid)]

    return Measured(name, trips, lambda: descendants(server.pid), agents)


def products(
    procs: Procs,
    stack: ExitStack,
    root: Path,
    mesh_recording: bool = False,
    pythons: Sequence[str] = (),
) -> list[Measured]:
    """Ours and MeshCentral's, each one's shell running ``cat``; also a MeshCentral
    that records its terminal, and ours on each of ``pythons``."""
    found = [_ours(procs, stack, root), _theirs(procs, stack, root)]
    if mesh_recording:
        found.append(_theirs(procs, stack, root, recording=True))
    found += [_ours(procs, stack, root, python) for python in pythons]
    return found


def run(
    root: Path, rounds: int, count: int, mesh_recording: bool = False, pythons: Sequence[str] = ()
) -> dict[str, Any]:
    procs = Procs()
    try:
        with ExitStack() as stack:
            sides = products(procs, stack, root, mesh_recording, pythons)
            return interleaved(sides, rounds, count)
    finally:
        procs.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peercost",
        description="keystroke echo: CPU per round trip, allowhelp against MeshCentral",
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds (10)")
    parser.add_argument("--count", type=int, default=2000, help="round trips per round (2000)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--mesh-recording",
        action="store_true",
        help="also a MeshCentral with its terminal session recording on, as ours always is",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PATH",
        help="also ours on this interpreter (allowhelp[broker] installed for it; repeatable)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.count < 10:
        parser.error("--rounds must be at least 1 and --count at least 10")
    try:
        versions = [python_version(python) for python in args.python]
    except (OSError, subprocess.SubprocessError) as exc:
        parser.error(f"--python: not a Python that runs ({exc})")
    if len(set(versions)) != len(versions):
        parser.error(f"--python: one version each ({', '.join(versions)})")
    with tempfile.TemporaryDirectory(prefix="peercost-") as tmp:
        result = run(Path(tmp), args.rounds, args.count, args.mesh_recording, args.python)
    medians: dict[str, dict[str, float]] = result["median"]
    rows = [[name, *(fmt(key, row[key]) for key in FIGURES)] for name, row in medians.items()]
    print(table(["product", "p50_ms", "p99_ms", "server_us", "agent_us"], rows))
    if args.json is not None:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
