"""py-spy, run from outside: sample a process while it works, then summarise where time goes.

py-spy (``.venv/bin/pip install py-spy``; bench only, not a project dependency)
samples the running process from outside at 200 Hz without pausing it
(``--nonblocking``), only while a thread is on CPU (idle waits are left out).
The summary gives, per process, the share of samples spent *in* each function
(self) and *under* it (inclusive), and a coarse split by component. Used by
the profile section (``profiling.py``) and the fleet fill (``fleet.py``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import PY, Procs

PYSPY = Path(PY).parent / "py-spy"

# (component, substring of the frame's file path); first match wins, leaf frame first
COMPONENTS = (
    ("OpenSSL / cryptography", "cryptography/"),
    ("asyncssh crypto wrappers", "asyncssh/crypto/"),
    ("asyncssh (SSH protocol)", "asyncssh/"),
    ("websockets", "websockets/"),
    ("uvicorn", "uvicorn/"),
    ("starlette", "starlette/"),
    ("sqlite3", "sqlite3/"),
    ("json", "json/"),
    ("logging", "logging/"),
    ("asyncio event loop", "asyncio/"),
    ("ssl (TLS)", "ssl.py"),
    ("allowhelp", "allowhelp/"),
)


def available() -> str | None:
    if PYSPY.exists() or shutil.which("py-spy"):
        return None
    return "py-spy not found: .venv/bin/pip install py-spy (bench only)"


class Profiler:
    def __init__(self, procs: Procs, pid: int, out: Path, duration: float = 600) -> None:
        self.out = out
        exe = str(PYSPY) if PYSPY.exists() else "py-spy"
        argv = [exe, "record", "-p", str(pid), "-r", "200", "--nonblocking", "--nolineno"]
        argv += ["-f", "raw", "-o", str(out), "-d", str(int(duration))]
        self.proc = procs.start(argv, log_path=out.with_suffix(".log"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needle in COMPONENTS:
            if needle in frame:
                return name
    return "other (interpreter, stdlib)"


def _short(frame: str) -> str:
    """``func (path/to/pkg/mod.py)`` → ``func (pkg/mod.py)``."""
    if " (" not in frame:
        return frame
    func, where = frame.split(" (", 1)
    where = where.rstrip(")")
    parts = where.split("/")
    for anchor in ("site-packages", "python3.11", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{func} ({'/'.join(parts[-3:])})"


def summarise(raw: Path, top: int = 12) -> dict[str, Any]:
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        # py-spy puts the thread name first ("thread (0x...)" / process) in raw output
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        selfc[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            incl[frame] += count
        comp[_component(frames)] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v * 100 / total, 1)) for k, v in c.most_common(top)] if total else []

    return {
        "samples": total,
        "self_percent": pct(selfc),
        "inclusive_percent": pct(incl),
        "component_percent": pct(comp),
    }


# Where a broker's CPU goes during a reconnect storm (``python -m bench.fleet N
# --profile-restart``): (part, test on the whole stack's frames), first match wins.
# The threads first (they hold no event-loop frames), then the event loop's work
# by its leaf frame, then by what it was doing for (the login's bookkeeping).
def _leaf_in(*needles: str) -> Callable[[list[str]], bool]:
    return lambda frames: any(n in frames[-1] for n in needles)


def _any_in(*needles: str) -> Callable[[list[str]], bool]:
    return lambda frames: any(n in f for f in frames for n in needles)


STORM_PARTS: tuple[tuple[str, Callable[[list[str]], bool]], ...] = (
    ("audit writer thread (hash chain, SQLite, fsync)", _any_in("AuditLog._run")),
    ("store threads: connectivity history", _any_in("record_connectivity")),
    ("store threads: inventory (hello)", _any_in("update_agent_info")),
    ("store threads: console feed's row reads", _any_in("FleetStore.agent (")),
    ("store threads: the rest (API reads, logins)", _any_in("_WorkItem.run")),
    # py-spy counts some of a worker thread's waits for its next call as on CPU
    ("store threads: between calls", _leaf_in("_worker (", "Condition.wait", "Semaphore.")),
    ("handing calls to the store threads (on the loop)", _any_in("_Lane.call", "StoreWorker.")),
    ("console API and feed on the loop (the bench's polls)", _any_in("console/", "starlette/")),
    ("public-key crypto (X25519, Ed25519)", _leaf_in("asyncssh/crypto/ed.py", "cryptography/")),
    ("packet ciphers (AES-GCM)", _leaf_in("asyncssh/crypto/cipher.py")),
    ("socket writes (asyncssh's _send)", _leaf_in("SSHConnection._send (")),
    ("asyncssh Python (packets, negotiation, auth, channels)", _leaf_in("asyncssh/")),
    (
        "our login: key check, audit record, registry, control channel, hello",
        _any_in("allowhelp/broker/tunnel/", "allowhelp/broker/audit/"),
    ),
    ("logging", _leaf_in("logging/")),
)


def split(raw: Path, parts: tuple[tuple[str, Callable[[list[str]], bool]], ...]) -> dict[str, Any]:
    """The share of on-CPU samples in each part (first match), the rest as 'other'."""
    shares: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [f for f in _frames(stack) if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        part = next((name for name, test in parts if test(frames)), "event loop and the rest")
        shares[part] += count
    return {
        "samples": total,
        "percent": {k: round(v * 100 / total, 1) for k, v in shares.most_common()} if total else {},
    }
