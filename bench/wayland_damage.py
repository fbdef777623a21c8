"""What a pointer move costs the wlroots "all monitors" engine, before and after a change.

    .venv/bin/python -m bench.wayland_damage [--baseline REV] [--seconds 5] [--runs 3]   (as root)

An idle sway (headless, pixman) with a 3840x2160 output and a 1920x1080 one right
of it, as a local user (``ahbench``, made and removed as in ``bench.wayland``).
The technician asks for ``all`` with control: ``wayvncall`` runs one wayvnc per
output and composes them (a 5760x2160 picture). After the first whole picture,
a loop moves the pointer across the 4K output (one pointer event, one
incremental request, one complete update) for ``--seconds``: nothing else
changes on the screen, so each update is what the cursor's move damaged.

It measures the engine process alone (``wayvncall``: its CPU from /proc) per
update, the bytes of each update and updates per second, for the code of this
checkout (``now``) and of ``--baseline`` (default: ``main``; its ``allowhelp``
unpacked from git into a temporary folder, the working folder and first on
PYTHONPATH of the measurement and so of the engine it starts), the two
interleaved in each run so that load from elsewhere hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, dump_json, fmt, log, machine, median, proc_stat, table

FIRST, SECOND = (3840, 2160), (1920, 1080)


async def _measure(seconds: float) -> dict[str, Any]:
    """As the user, in the session: the engine through the agent's own launch."""
    from allowhelp.agent.reaper import end_process_group  # noqa: PLC0415 - this tree's
    from allowhelp.agent.screenlaunch import launch_screen  # noqa: PLC0415
    from bench.wayland import _handshake  # noqa: PLC0415

    launch = launch_screen(os.environ, view_only=False, monitor="all")
    try:
        sock = await launch.connect()
        sock.settimeout(20)
        width, height, bpp = _handshake(sock)
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        _update(sock, bpp)
        moves = 0

        def moved() -> list[tuple[int, int, int, int]]:
            """Move the pointer, ask for the change; move again while none comes (a
            move the compositor coalesced, or one the server found no change in)."""
            nonlocal moves
            sock.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, width, height))
            while True:
                moves += 1
                x = 200 + (moves * 37) % (FIRST[0] - 400)
                y = 200 + (moves * 23) % (FIRST[1] - 400)
                sock.sendall(struct.pack(">BBHH", 5, 0, x, y))
                with contextlib.suppress(TimeoutError):
                    return _update(sock, bpp)

        sock.settimeout(1.0)
        moved()  # not counted: the first picture's rest, if any, comes with it
        sample: list[list[int]] = []
        cpu_before = proc_stat(launch.proc.pid).cpu_s
        updates = received = 0
        moves = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            rects = moved()
            sample += [list(r) for r in rects[:4]] if updates % 50 == 0 else []
            received += sum(12 + r[2] * r[3] * bpp // 8 for r in rects)
            updates += 1
        elapsed = time.monotonic() - start
        cpu = proc_stat(launch.proc.pid).cpu_s - cpu_before
        sock.close()
    finally:
        await end_process_group(launch.proc, (signal.SIGTERM,), 2.0, name="screen")
        launch.cleanup()
    return {
        "size": [width, height],
        "updates_per_s": updates / elapsed,
        "kib_per_update": received / max(updates, 1) / 1024,
        "engine_cpu_ms_per_update": cpu * 1000 / max(updates, 1),
        "moves_per_update": moves / max(updates, 1),
        "rects_sample": sample,
    }


def _update(sock: socket.socket, bpp: int) -> list[tuple[int, int, int, int]]:
    """One complete FramebufferUpdate (Raw): its rectangles, pixels read and dropped."""
    from bench.wayland import _read  # noqa: PLC0415

    while (kind := _read(sock, 1)[0]) != 0:
        if kind == 3:
            _read(sock, struct.unpack(">3xI", _read(sock, 7))[0])
        elif kind != 2:
            raise ConnectionError(f"unexpected server message {kind}")
    rects = []
    for _ in range(struct.unpack(">xH", _read(sock, 3))[0]):
        x, y, w, h, _ = struct.unpack(">HHHHi", _read(sock, 12))
        _read(sock, w * h * bpp // 8)
        rects.append((x, y, w, h))
    return rects


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    """``allowhelp`` as it is at ``rev``, unpacked into a folder anyone may read."""
    folder = Path(tempfile.mkdtemp(prefix="ahbench-baseline-"))
    try:
        os.chmod(folder, 0o755)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "allowhelp"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_variant(
    account: pwd.struct_passwd, tree: Path, seconds: float, desktop: Any, as_user: Any
) -> dict[str, Any]:
    with desktop("wlroots-all", account, sizes=(FIRST, SECOND), busy="") as env:
        path = f"{tree}:{ROOT}"
        argv = as_user(account, {**env, "PYTHONPATH": path}, "/usr/bin/python3", "-m")
        argv += ["bench.wayland_damage", "--inner", "--seconds", str(seconds)]
        done = subprocess.run(  # cwd: ``-m`` puts it first on the path, engine's too
            argv, capture_output=True, text=True, timeout=seconds + 120, check=False, cwd=tree
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tree}: {done.stderr.strip()[-500:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--baseline", default="main", help="the git revision to compare with")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(asyncio.run(_measure(args.seconds))))
        return
    if os.geteuid() != 0:
        sys.exit("bench.wayland_damage: run as root (it makes a local user for the desktop)")
    from bench.wayland import _as_user, bench_user, desktop  # noqa: PLC0415

    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "now": []}
    with baseline_tree(args.baseline) as old, bench_user() as account:
        trees = {"baseline": old, "now": ROOT}
        for run in range(args.runs):
            for variant, tree in trees.items():
                log(f"run {run + 1}/{args.runs}: {variant}")
                results[variant].append(run_variant(account, tree, args.seconds, desktop, _as_user))
    rows = [
        [
            variant,
            fmt(median([r["engine_cpu_ms_per_update"] for r in runs]), 2),
            fmt(median([r["kib_per_update"] for r in runs])),
            fmt(median([r["updates_per_s"] for r in runs])),
        ]
        for variant, runs in results.items()
    ]
    print(table(["code", "engine CPU ms/update", "KiB/update", "updates/s"], rows))
    out = ROOT / "bench" / "results" / "wayland-damage.json"
    info = {"machine": machine(), "baseline": args.baseline, "seconds": args.seconds}
    dump_json(out, {**info, "runs": results})
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
