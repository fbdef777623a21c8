"""``bench/run --only peers``: allowhelp and MeshCentral side by side, interleaved (issue #19).

Both products on 127.0.0.1, both agents on one private Xvfb where
``bench.peers.animate`` keeps the screen busy, OpenSSH (``ssh -tt`` to a
throwaway sshd) as the keystroke floor. Each round measures, in turn for each
product: keystroke echo through its web terminal path, bulk through that
terminal, time to the first screen picture and the busy screen's updates and
bytes per second. Figures are medians over the rounds. Then the busy screen
again with the technician on an emulated branch link (``bench.peers.branch``),
and keystrokes typed by Chromium into each product's terminal page
(``bench.peers.browser``). Then memory: a fresh
server of each with ``AGENTS`` idle agents. A figure that cannot be measured
is ``null`` with its reason under ``notes``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench import openssh
from bench.common import Procs, log, proc_stat
from bench.latency import allowhelp_rtts, ssh_rtts, summary
from bench.peers import browser, ours, theirs
from bench.peers.animate import start_busy_screen
from bench.peers.branch import LINK, branch_link
from bench.peers.meshserver import VERSION, MeshServer, install
from bench.screen import Allowhelp

AGENTS = 200
MIB = 1 << 20
PRODUCTS = ("allowhelp", "meshcentral")
T = TypeVar("T")


class Notes:
    """Why a figure is missing: the first failure of each measurement."""

    def __init__(self) -> None:
        self.why: dict[str, str] = {}

    def attempt(self, what: str, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except Exception as exc:  # a failed figure is reported as null, not fatal
            log(f"peers: {what} failed: {exc!r}")
            self.why.setdefault(what, repr(exc))
            return None


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 4) if got else None


def _keystroke_summary(samples: list[float] | None) -> dict[str, float] | None:
    if samples is None:
        return None
    full = summary(samples)
    return {"p50_ms": full["p50_ms"], "p99_ms": full["p99_ms"]}


class Side:
    """One product's running stack and the per-round figures gathered for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.keystroke: list[dict[str, float] | None] = []
        self.bulk: list[float | None] = []
        self.screens: list[ours.ScreenRun | None] = []


def _ours(stack: Allowhelp, side: Side, notes: Notes, sizes: dict[str, Any]) -> None:
    count, bulk = sizes["count"], sizes["bulk"]
    warmup, seconds = sizes["warmup"], sizes["seconds"]
    rtts = notes.attempt("allowhelp keystroke", lambda: allowhelp_rtts(stack, count))
    side.keystroke.append(_keystroke_summary(rtts))
    side.bulk.append(
        notes.attempt("allowhelp bulk", lambda: asyncio.run(ours.bulk_download(stack, bulk)))
    )
    side.screens.append(
        notes.attempt(
            "allowhelp screen", lambda: asyncio.run(ours.screen_run(stack, warmup, seconds))
        )
    )


def _theirs(server: MeshServer, node: str, side: Side, notes: Notes, sizes: dict[str, Any]) -> None:
    count, bulk = sizes["count"], sizes["bulk"]
    warmup, seconds = sizes["warmup"], sizes["seconds"]
    rtts = notes.attempt("meshcentral keystroke", lambda: theirs.keystrokes(server, node, count))
    side.keystroke.append(_keystroke_summary(rtts))
    side.bulk.append(
        notes.attempt("meshcentral bulk", lambda: theirs.bulk_download(server, node, bulk))
    )
    side.screens.append(
        notes.attempt(
            "meshcentral screen", lambda: theirs.screen_run(server, node, warmup, seconds)
        )
    )


def _ssh(sshd: openssh.Sshd, side: Side, notes: Notes, count: int) -> None:
    rtts = notes.attempt("ssh keystroke", lambda: ssh_rtts(sshd, count))
    side.keystroke.append(_keystroke_summary(rtts))


def _round(
    i: int,
    stack: Allowhelp | None,
    mesh: tuple[MeshServer, str] | None,
    sshd: openssh.Sshd | None,
    sides: dict[str, Side],
    notes: Notes,
    sizes: dict[str, Any],
) -> None:
    # the order alternates per round so that neither product always goes first
    order = list(PRODUCTS) if i % 2 == 0 else list(reversed(PRODUCTS))
    for name in order:
        if name == "allowhelp" and stack is not None:
            _ours(stack, sides[name], notes, sizes)
        elif name == "meshcentral" and mesh is not None:
            _theirs(mesh[0], mesh[1], sides[name], notes, sizes)
    if sshd is not None:
        _ssh(sshd, sides["ssh"], notes, sizes["count"])
    log(f"peers: round {i + 1} done")


def _branch(
    procs: Procs,
    root: Path,
    stack: Allowhelp | None,
    mesh: tuple[MeshServer, str] | None,
    notes: Notes,
    sizes: dict[str, Any],
    rounds: int,
) -> dict[str, Any]:
    """The busy screen again, the technician's side on the emulated branch link
    (``bench.peers.branch``), interleaved rounds; medians."""
    runs: dict[str, list[ours.ScreenRun | None]] = {name: [] for name in PRODUCTS}
    targets: dict[str, int] = {}
    if stack is not None:
        targets["allowhelp"] = int(stack.broker.https.rsplit(":", 1)[1])
    if mesh is not None:
        targets["meshcentral"] = mesh[0].port
    warmup, seconds = sizes["warmup"], sizes["seconds"]

    def measure(ports: dict[str, int]) -> None:
        for i in range(rounds):
            for name in PRODUCTS if i % 2 == 0 else tuple(reversed(PRODUCTS)):
                if name == "allowhelp" and stack is not None:
                    runs[name].append(
                        notes.attempt(
                            "allowhelp branch screen",
                            lambda: asyncio.run(
                                ours.screen_run(stack, warmup, seconds, via=ports["allowhelp"])
                            ),
                        )
                    )
                elif name == "meshcentral" and mesh is not None:
                    runs[name].append(
                        notes.attempt(
                            "meshcentral branch screen",
                            lambda: theirs.screen_run(
                                mesh[0], mesh[1], warmup, seconds, via=ports["meshcentral"]
                            ),
                        )
                    )
            log(f"peers: branch round {i + 1} done")

    def linked() -> None:
        with branch_link(procs, root / "branch", targets) as ports:
            measure(ports)

    if targets:
        notes.attempt("branch link", linked)

    def med(name: str, field: str) -> float | None:
        return _median([getattr(r, field) if r else None for r in runs[name]])

    return {
        "screen_updates_per_s": {name: med(name, "updates_per_s") for name in PRODUCTS},
        "screen_bytes_per_s": {name: med(name, "bytes_per_s") for name in PRODUCTS},
        "first_picture_s": {name: med(name, "first_picture_s") for name in PRODUCTS},
        "link": LINK,
        "per_round": {name: [vars(r) if r else None for r in runs[name]] for name in PRODUCTS},
    }


def _start_mesh(
    procs: Procs, root: Path, display: str, *, ping_storm: bool = False
) -> tuple[MeshServer, str, float]:
    install()
    server = MeshServer(procs, root / "meshcentral" / "data", ping_storm=ping_storm)
    try:
        server.configure()
        server.start()
        server.add_group()
        agent = server.start_agent(root / "meshcentral" / "agent", server.msh(), display)
        node = server.wait_agents(1, 120)[0]
        time.sleep(2)  # the agent settles after its first core exchange
        return server, node, proc_stat(agent.pid).rss_kib / 1024
    except BaseException:
        server.stop()
        raise


def run(procs: Procs, root: Path, *, quick: bool) -> dict[str, Any]:
    notes = Notes()
    sizes = {
        "count": 1000 if quick else 2000,
        "bulk": (16 if quick else 64) * MIB,
        "warmup": 2.0 if quick else 3.0,
        "seconds": 4.0 if quick else 8.0,
        "browser_keys": 300,  # a p99 of 100 keys is their second slowest
    }
    rounds = 2 if quick else 3
    sides = {name: Side(name) for name in (*PRODUCTS, "ssh")}
    rss: dict[str, float | None] = {"allowhelp": None, "meshcentral": None}
    display = start_busy_screen(procs, root)
    sshd, why = openssh.start_if_present(procs, root / "sshd")
    if sshd is None:
        notes.why["ssh keystroke"] = why or "sshd did not start"
    stack = notes.attempt(
        "allowhelp start",
        lambda: Allowhelp.on_display(procs, root / "allowhelp", display, idle="doorbell"),
    )
    if stack is not None:
        time.sleep(2)
        rss["allowhelp"] = notes.attempt("allowhelp agent rss", lambda: ours.agent_rss_mb(stack))
    started = notes.attempt("meshcentral start", lambda: _start_mesh(procs, root, display))
    mesh = None
    if started is not None:
        mesh = (started[0], started[1])
        rss["meshcentral"] = started[2]
    try:
        for i in range(rounds):
            _round(i, stack, mesh, sshd, sides, notes, sizes)
        branch = _branch(procs, root, stack, mesh, notes, sizes, rounds)
        typed = notes.attempt(
            "browser keystroke",
            lambda: asyncio.run(browser.keystrokes(stack, mesh, int(sizes["browser_keys"]))),
        )
    finally:
        if stack is not None:
            stack.close()
        if mesh is not None:
            mesh[0].stop()
        procs.close()
    memory = {
        "allowhelp": notes.attempt(
            "allowhelp server memory",
            lambda: ours.server_kib_per_agent(procs, root / "memory", AGENTS, 10.0),
        ),
        "meshcentral": notes.attempt(
            "meshcentral server memory",
            lambda: theirs.server_kib_per_agent(procs, root / "memory", AGENTS, 10.0),
        ),
    }
    procs.close()
    result = report(sides, rss, memory, notes, sizes, rounds)
    result["branch"] = branch
    result["keystroke_browser"] = typed[0] if typed else {p: None for p in PRODUCTS}
    for name, why in (typed[1] if typed else {}).items():
        notes.why.setdefault(f"{name} browser keystroke", why)
    return result


def report(
    sides: dict[str, Side],
    rss: dict[str, float | None],
    memory: dict[str, dict[str, Any] | None],
    notes: Notes,
    sizes: dict[str, Any],
    rounds: int,
) -> dict[str, Any]:
    def key(side: Side, field: str) -> float | None:
        return _median([k[field] if k else None for k in side.keystroke])

    def screen(side: Side, field: str) -> float | None:
        return _median([getattr(s, field) if s else None for s in side.screens])

    products = [sides[p] for p in PRODUCTS]
    keystroke: dict[str, Any] = {}
    for side in (*products, sides["ssh"]):
        p50, p99 = key(side, "p50_ms"), key(side, "p99_ms")
        keystroke[side.name] = None if p50 is None else {"p50_ms": p50, "p99_ms": p99}
    return {
        "keystroke": keystroke,
        "first_picture_s": {s.name: screen(s, "first_picture_s") for s in products},
        "screen_updates_per_s": {s.name: screen(s, "updates_per_s") for s in products},
        "screen_bytes_per_s": {s.name: screen(s, "bytes_per_s") for s in products},
        "server_kib_per_agent": {
            name: (round(m["kib_per_agent"], 1) if m else None) for name, m in memory.items()
        },
        "agent_rss_mb": {name: (round(v, 1) if v is not None else None) for name, v in rss.items()},
        "bulk_mb_s": {s.name: _median(s.bulk) for s in products},
        "details": {
            "meshcentral_version": VERSION,
            # the allowhelp agent as started here: the idle process holds only its
            # doorbell, the full agent runs while woken (agent_rss_mb: the doorbell's)
            "allowhelp_agent_idle": "doorbell",
            "rounds": rounds,
            "keystrokes_per_round": sizes["count"],
            "bulk_bytes": sizes["bulk"],
            "screen_warmup_s": sizes["warmup"],
            "screen_seconds": sizes["seconds"],
            "allowhelp_consent_s": screen(sides["allowhelp"], "consent_s"),
            "memory": memory,
            "per_round": {
                s.name: {
                    "keystroke": s.keystroke,
                    "bulk_mb_s": s.bulk,
                    "screen": [vars(r) if r else None for r in s.screens],
                }
                for s in (*products, sides["ssh"])
            },
        },
        "notes": notes.why,
    }


def table(res: dict[str, Any]) -> list[list[str]]:
    """Rows for the printed report: figure, allowhelp, MeshCentral, OpenSSH."""

    def f(value: Any, digits: int = 2) -> str:
        return "null" if value is None else f"{value:,.{digits}f}"

    k = res["keystroke"]

    def ks(name: str, field: str) -> str:
        return f(k[name][field]) if k.get(name) else "null"

    rows = [
        [
            "keystroke echo p50 ms",
            ks("allowhelp", "p50_ms"),
            ks("meshcentral", "p50_ms"),
            ks("ssh", "p50_ms"),
        ],
        [
            "keystroke echo p99 ms",
            ks("allowhelp", "p99_ms"),
            ks("meshcentral", "p99_ms"),
            ks("ssh", "p99_ms"),
        ],
    ]
    for label, field, digits in (
        ("bulk through the terminal MB/s", "bulk_mb_s", 1),
        ("first picture s", "first_picture_s", 2),
        ("busy screen updates/s", "screen_updates_per_s", 1),
        ("busy screen bytes/s", "screen_bytes_per_s", 0),
        ("server KiB per idle agent", "server_kib_per_agent", 1),
        ("agent RSS MB", "agent_rss_mb", 1),
    ):
        rows.append(
            [label, f(res[field]["allowhelp"], digits), f(res[field]["meshcentral"], digits), ""]
        )
    typed = res.get("keystroke_browser") or {}
    for label, field in (
        ("browser keystroke p50 ms", "p50_ms"),
        ("browser keystroke p99 ms", "p99_ms"),
    ):
        if typed:
            rows.append(
                [label, *(f(typed[p][field]) if typed.get(p) else "null" for p in PRODUCTS), ""]
            )
    branch = res.get("branch") or {}
    for label, field, digits in (
        ("branch link: first picture s", "first_picture_s", 2),
        ("branch link: busy screen updates/s", "screen_updates_per_s", 1),
        ("branch link: busy screen bytes/s", "screen_bytes_per_s", 0),
    ):
        if field in branch:
            got = branch[field]
            rows.append([label, f(got["allowhelp"], digits), f(got["meshcentral"], digits), ""])
    return rows
