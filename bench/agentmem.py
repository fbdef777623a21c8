"""The idle agent's memory (issue #19: agent RSS ≤ 25 MB), this tree against a baseline.

    python -m bench.agentmem [--baseline REF] [--rounds N] [--settle S] [--json OUT]
    python -m bench.agentmem --profile [--json OUT]   # where this tree's megabytes are

One broker on 127.0.0.1 and two enrolled PCs: a per-user agent (``run --prompt
none``, what ``bench.peers`` measures) and, when run as root, a machine service
(``run --system``, the systemd unit's). Each configuration is the product's own
command (``python -m allowhelp.agent.cli run ...``, not ``bench.launch``, whose
own imports would count), run from a copy of its ``allowhelp`` package:

* code: this working tree, or the baseline commit REF (``git archive``; default
  ``main``);
* bytecode: ``pyc`` (compiled beforehand, as the .deb's postinst does) or
  ``source`` (compiled at each start, as this checkout runs with
  PYTHONDONTWRITEBYTECODE);
* loop: ``uvloop`` (installed here: the broker's extra) or ``asyncio`` (uvloop
  hidden, as on a PC with the agent's .deb, which does not bring it);
* idle (this tree only): ``tunnel`` (one process holds the SSH tunnel) or
  ``doorbell`` (``--idle doorbell``: the idle process holds only an HTTPS stream
  to the broker and starts the full agent when rung; it runs no event loop).

``--profile``: where the idle per-user agent's memory is, for this tree (pyc,
asyncio): RSS after each step of its imports, each in a fresh interpreter
(``LADDER``); the running agent's RSS by mapping (``/proc/PID/smaps``: a
library's pages, or anonymous memory); and the Python allocations made while
importing each package, nested imports not counted twice (tracemalloc, in a
second run: tracing costs memory of its own).

Interleaved: each round starts every configuration once, one at a time, in an
order that alternates between rounds, so the machine's load meets all of them.
A run: start, wait for the agent's "connected to the broker" line, ``--settle``
seconds more (2, as ``bench.peers``), then read ``/proc/PID/status`` (VmRSS,
RssAnon, RssFile, Threads) and ``smaps_rollup`` (Pss), and stop it. Medians.
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT, Procs, children, dump_json, fmt, log, table, wait_for
from bench.stack import Broker, cli

CONNECTED = b"connected to the broker"
LINGER = 3.0  # s: doorbell mode's woken agent exits after this long idle
FIELDS = ("VmRSS", "RssAnon", "RssFile", "Threads")
# sys.modules["uvloop"] = None makes `import uvloop` fail: the agent falls back to asyncio
# the agent's own CLI; uvloop hidden (sys.modules["uvloop"] = None: `import uvloop` fails)
RUN_CLI = "import runpy; runpy.run_module('allowhelp.agent.cli', run_name='__main__')"
NO_UVLOOP = "import sys; sys.modules['uvloop'] = None; "


@dataclass(frozen=True)
class Config:
    code: str  # "tree" or "baseline"
    bytecode: str  # "pyc" or "source"
    loop: str  # "uvloop" or "asyncio"
    process: str  # "user" or "machine"
    idle: str = "tunnel"  # "tunnel" (one process holds the SSH tunnel) or "doorbell"

    @property
    def name(self) -> str:
        base = f"{self.process}/{self.code}/{self.bytecode}/{self.loop}"
        return base if self.idle == "tunnel" else f"{base}/doorbell"


def copy_package(code: str, ref: str, dest: Path) -> None:
    """``allowhelp/`` of the working tree, or of commit ``ref``, into ``dest``."""
    dest.mkdir(parents=True)
    if code == "tree":
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "allowhelp", dest / "allowhelp", ignore=ignore)
        return
    archive = dest / "src.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "allowhelp"],
        check=True,
        timeout=60,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


def prepare(
    root: Path,
    ref: str,
    codes: tuple[str, ...] = ("tree", "baseline"),
    bytecodes: tuple[str, ...] = ("pyc", "source"),
) -> dict[tuple[str, str], Path]:
    """One copy per (code, bytecode); the ``pyc`` copies compiled by this Python."""
    copies = {}
    for code, bytecode in itertools.product(codes, bytecodes):
        dest = root / f"{code}-{bytecode}"
        copy_package(code, ref, dest)
        if bytecode == "pyc" and not compileall.compile_dir(dest / "allowhelp", quiet=1):
            raise RuntimeError(f"could not compile {dest}")
        copies[code, bytecode] = dest
    return copies


def status(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            found[key] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            found["Pss"] = int(line.split()[1])
    return found


def measure(
    procs: Procs,
    config: Config,
    copy: Path,
    folder: Path,
    settle: float,
    *,
    probe: tuple[str, str] | None = None,
    at_idle: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One run of ``config``; ``probe``: (code run before the CLI, its argument);
    ``at_idle(pid)`` is called once the agent is idle, before it stops.

    Doorbell mode: the process started is the doorbell; its first start wakes the
    full agent (no key yet), which connects, takes its key and exits after
    ``LINGER`` s. The reading is the doorbell's, once that child has gone; the
    awake child's RSS, read while it was connected, is kept as ``woken_*``."""
    code = (NO_UVLOOP if config.loop == "asyncio" else "") + RUN_CLI
    argv = [PY, "-c", code]
    if probe is not None:
        argv = [PY, "-c", probe[0] + "\n" + code, probe[1]]
    argv += ["run", "--config", str(folder), "--reconnect-cap", "2"]
    argv += ["--system"] if config.process == "machine" else ["--prompt", "none"]
    if config.idle == "doorbell":
        argv += ["--idle", "doorbell", "--linger", f"{LINGER:g}"]
    log_path = folder.parent / f"{folder.name}.log"
    log_path.unlink(missing_ok=True)
    env = {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    # cwd: the copy, so that `-c`'s sys.path[0] finds the copy and not this checkout
    proc = procs.start(argv, log_path=log_path, env=env, cwd=copy)
    try:
        wait_for(lambda: CONNECTED in log_path.read_bytes(), 60, f"{config.name} to connect")
        woken: dict[str, float] = {}
        if config.idle == "doorbell":
            child = children(proc.pid)
            if child:
                woken = {f"woken_{k}": v for k, v in status(child[0]).items()}
            wait_for(
                lambda: not children(proc.pid), LINGER + 30, f"{config.name}'s woken agent to go"
            )
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"{config.name} exited with {proc.returncode}; see {log_path}")
        reading = {**status(proc.pid), **woken}
        if at_idle is not None:
            at_idle(proc.pid)
    finally:
        procs.stop(proc)
    return {k: v / 1024 if not k.endswith("Threads") else v for k, v in reading.items()}


def run(rounds: int, ref: str, settle: float, root: Path) -> dict[str, Any]:
    procs = Procs()
    try:
        copies = prepare(root / "copies", ref)
        broker = Broker(procs, root / "broker").start()
        processes = ["user"] + (["machine"] if os.geteuid() == 0 else [])
        folders = {p: root / f"pc-{p}" for p in processes}
        for process, folder in folders.items():
            system = ["--system"] if process == "machine" else []
            cli("agent", "enroll", *system, broker.token(), "--config", str(folder))
        configs = [
            Config(*c)
            for c in itertools.product(
                ("tree", "baseline"), ("pyc", "source"), ("uvloop", "asyncio"), processes
            )
        ]
        # this tree's doorbell: the loop does not matter to it (it runs none)
        configs += [
            Config("tree", bytecode, "asyncio", process, "doorbell")
            for bytecode, process in itertools.product(("pyc", "source"), processes)
        ]
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
        for n in range(rounds):
            order = configs if n % 2 == 0 else configs[::-1]
            for config in order:
                copy = copies[config.code, config.bytecode]
                reading = measure(procs, config, copy, folders[config.process], settle)
                log(f"round {n + 1}: {config.name}: {reading['VmRSS']:.1f} MB RSS")
                runs[config.name].append(reading)
    finally:
        procs.close()
    medians = {
        name: {
            key: statistics.median(r[key] for r in rs if key in r)
            for key in sorted({key for r in rs for key in r})
        }
        for name, rs in runs.items()
    }
    return {"baseline": ref, "rounds": rounds, "settle_s": settle, "medians": medians, "runs": runs}


# --profile: cumulative imports, each line one more step, each in a fresh interpreter
LADDER = (
    ("Python, nothing imported", "pass"),
    ("+ asyncio (which imports ssl)", "import asyncio"),
    ("+ cryptography's Rust module", "import cryptography.hazmat.bindings._rust"),
    ("+ asyncssh (its __init__ imports all of it)", "import asyncssh"),
    ("+ the agent's `run` (cli, runner)", "import allowhelp.agent.cli, allowhelp.agent.runner"),
    ("+ uvloop (where installed)", "import uvloop"),
)
READ_RSS = (
    "; import json; print(json.dumps({l.split(':')[0]: int(l.split()[1]) for l in"
    " open('/proc/self/status') if l.split(':')[0] in ('VmRSS', 'RssAnon', 'RssFile')}))"
)
# Run before the agent's CLI: each import's own Python allocations (what it allocated
# while loading, less its nested imports'), summed by top-level package; SIGUSR1
# writes them to the path in argv[1] (taken off argv before the CLI reads it).
# importlib's private _load_unlocked is wrapped: a measuring tool, never the product.
TRACED = """
import json, signal, sys, tracemalloc
import importlib._bootstrap as bootstrap
out = sys.argv.pop(1)
tracemalloc.start(1)
own, stack, load = {}, [], bootstrap._load_unlocked
def counted(spec):
    before = tracemalloc.get_traced_memory()[0]
    stack.append(0)
    try:
        return load(spec)
    finally:
        nested = stack.pop()
        grew = tracemalloc.get_traced_memory()[0] - before
        top = spec.name.split('.')[0]
        own[top] = own.get(top, 0) + grew - nested
        if stack:
            stack[-1] += grew
bootstrap._load_unlocked = counted
def dump(*_):
    with open(out, 'w') as fh:
        now = tracemalloc.get_traced_memory()[0]
        json.dump({'traced': now, 'modules': len(sys.modules), 'own': own}, fh)
signal.signal(signal.SIGUSR1, dump)
"""


def ladder(copy: Path) -> list[dict[str, Any]]:
    steps, done = [], []
    for what, statement in LADDER:
        done.append(statement)
        answer = subprocess.run(
            [PY, "-W", "ignore", "-c", "; ".join(done) + READ_RSS],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        kib = json.loads(answer.stdout)
        steps.append({"step": what, **{k: v / 1024 for k, v in kib.items()}})
    return steps


def mappings(pid: int) -> dict[str, dict[str, float]]:
    """RSS and anonymous MB by mapping: a file's base name, [heap], [anon], [stack]."""
    found: dict[str, dict[str, float]] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            name = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"
        elif parts[0] in ("Rss:", "Anonymous:"):
            entry = found.setdefault(name, {"rss": 0.0, "anon": 0.0})
            entry["rss" if parts[0] == "Rss:" else "anon"] += int(parts[1]) / 1024
    return dict(sorted(found.items(), key=lambda kv: -kv[1]["rss"]))


def profile(root: Path, settle: float) -> dict[str, Any]:
    procs = Procs()
    try:
        copies = prepare(root / "copies", "HEAD", codes=("tree",), bytecodes=("pyc",))
        copy = copies["tree", "pyc"]
        broker = Broker(procs, root / "broker").start()
        folder = root / "pc-user"
        cli("agent", "enroll", broker.token(), "--config", str(folder))
        result: dict[str, Any] = {"ladder": ladder(copy), "mappings": {}}
        for loop in ("asyncio", "uvloop"):

            def keep(pid: int, loop: str = loop) -> None:
                result["mappings"][loop] = mappings(pid)

            config = Config("tree", "pyc", loop, "user")
            result[f"status_{loop}"] = measure(procs, config, copy, folder, settle, at_idle=keep)
        out = root / "traced.json"

        def dump(pid: int) -> None:
            os.kill(pid, signal.SIGUSR1)
            wait_for(out.exists, 10, "the traced agent's figures")

        config = Config("tree", "pyc", "asyncio", "user")
        measure(procs, config, copy, folder, settle, probe=(TRACED, str(out)), at_idle=dump)
        result["traced"] = json.loads(out.read_text())
    finally:
        procs.close()
    return result


def report(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            fmt(m["VmRSS"]),
            fmt(m["RssAnon"]),
            fmt(m["RssFile"]),
            fmt(m["Pss"]),
            m["Threads"],
            fmt(m.get("woken_VmRSS")),
        ]
        for name, m in result["medians"].items()
    ]
    headers = ["process/code/bytecode/loop[/idle]", "RSS MB", "anon MB", "file MB", "PSS MB"]
    headers += ["threads", "woken child RSS MB"]
    return table(headers, rows)


def report_profile(result: dict[str, Any]) -> str:
    lines = ["Imports, cumulative (fresh interpreter each):"]
    rows = [
        [s["step"], fmt(s["VmRSS"]), fmt(s["RssAnon"]), fmt(s["RssFile"])] for s in result["ladder"]
    ]
    lines.append(table(["step", "RSS MB", "anon MB", "file MB"], rows))
    for loop, found in result["mappings"].items():
        total = result[f"status_{loop}"]
        lines.append(f"\nIdle connected agent ({loop}): {total['VmRSS']:.1f} MB RSS, by mapping:")
        top = list(found.items())[:14]
        rest = sum(v["rss"] for _, v in list(found.items())[14:])
        rows = [[name, fmt(v["rss"], 2), fmt(v["anon"], 2)] for name, v in top]
        rows.append(["(everything else)", fmt(rest, 2), ""])
        lines.append(table(["mapping", "RSS MB", "of which anon MB"], rows))
    traced = result["traced"]
    lines.append(
        f"\nPython allocations while importing (asyncio loop), by package; all live now:"
        f" {traced['traced'] / 2**20:.1f} MB in {traced['modules']} modules:"
    )
    own = sorted(traced["own"].items(), key=lambda kv: -kv[1])
    rows = [[name, fmt(size / 2**20, 2)] for name, size in own[:16]]
    rows.append(["(everything else)", fmt(sum(size for _, size in own[16:]) / 2**20, 2)])
    lines.append(table(["package", "MB"], rows))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agentmem")
    parser.add_argument("--baseline", default="main", help="git ref of the baseline (main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--profile", action="store_true", help="where this tree's MB are")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmem-") as tmp:
        if args.profile:
            result = profile(Path(tmp), args.settle)
            print(report_profile(result))
        else:
            result = run(args.rounds, args.baseline, args.settle, Path(tmp))
            print(report(result))
    if args.json is not None:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
