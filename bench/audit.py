"""Audit throughput: committed, hash-chained records per second on a real file.

The product's ``AuditLog`` as the broker opens it (WAL, ``synchronous=FULL``:
every append is fsynced before it returns). Writers:

* one thread calling ``append`` in a loop;
* four threads calling ``append`` at once (they queue on the log's lock);
* 64 asyncio tasks calling ``await write`` at once (the broker's path: one
  executor thread does the appends).

For information only, the same with ``synchronous=NORMAL`` (WAL: a commit is
durable at the next checkpoint, not at once), and one writer with
``synchronous=OFF`` (no fsync at all: what the hash, JSON and SQLite work cost
alone) — set on the log's connection after opening, which the product never does.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from allowhelp.broker.audit.log import AuditLog
from bench.common import median

DETAILS = {
    "agent_id": "a1b2c3d4e5f6a7b8c9d0",
    "remote": "127.0.0.1:52344",
    "reason": "printer in room 12 jams; the user asked for help",
}


def _open(path: Path, synchronous: str) -> AuditLog:
    audit = AuditLog.open(path)
    if synchronous != "FULL":
        audit._conn.execute(f"PRAGMA synchronous={synchronous}")
    return audit


def single(path: Path, count: int, synchronous: str) -> float:
    audit = _open(path, synchronous)
    try:
        t0 = time.perf_counter()
        for i in range(count):
            audit.append("agent.connected", actor=f"agent:{i}", target=str(i), details=DETAILS)
        return count / (time.perf_counter() - t0)
    finally:
        audit.close()


def threads(path: Path, count: int, synchronous: str, nthreads: int = 4) -> float:
    audit = _open(path, synchronous)
    per = count // nthreads

    def work(k: int) -> None:
        for i in range(per):
            audit.append("agent.connected", actor=f"agent:{k}", target=str(i), details=DETAILS)

    try:
        pool = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return per * nthreads / (time.perf_counter() - t0)
    finally:
        audit.close()


def tasks(path: Path, count: int, synchronous: str, ntasks: int = 64) -> float:
    audit = _open(path, synchronous)
    per = count // ntasks

    async def work(k: int) -> None:
        for i in range(per):
            await audit.write("agent.connected", actor=f"agent:{k}", target=str(i), details=DETAILS)

    async def all_tasks() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(work(k) for k in range(ntasks)))
        return per * ntasks / (time.perf_counter() - t0)

    try:
        return asyncio.run(all_tasks())
    finally:
        audit.close()


def fsync_rate(folder: Path, count: int = 500) -> float:
    """Raw ``write`` + ``fsync`` of 100 bytes per second on this disk, for context:
    FULL durability cannot beat it, and on a shared VM it moves between runs."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 100)
            os.fsync(fd)
        return count / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def run(root: Path, *, quick: bool) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    count = 2000 if quick else 10000
    runs = 3
    result: dict[str, Any] = {
        "records_per_run": count,
        "runs": runs,
        "folder_fs": _fs(root),
        "fsync_per_s_before": fsync_rate(root),
    }
    modes = {"single writer": single, "4 threads": threads, "64 asyncio tasks (write)": tasks}
    for synchronous in ("FULL", "NORMAL", "OFF"):
        for name, fn in modes.items():
            if synchronous == "OFF" and fn is not single:
                continue
            samples = []
            for r in range(runs):
                path = root / f"audit-{synchronous}-{name.split()[0]}-{r}.sqlite3"
                samples.append(fn(path, count, synchronous))
            result[f"{name}, synchronous={synchronous}"] = {
                "per_s": median(samples),
                "samples": samples,
            }
    result["fsync_per_s_after"] = fsync_rate(root)
    return result


def _fs(path: Path) -> str:
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, f"{parts[2]} on {parts[0]}"
    return kind
