"""The tunnel's two routes side by side (issue #16): the raw SSH port against SSH inside
a WebSocket on the HTTPS port (``wss://…/api/v1/tunnel``, ``allowhelp/wsbridge.py``).

One broker, two real agents enrolled on it: ``ssh`` (its agent.json as
enrolment wrote it; the raw port works, so it is the route taken) and
``https`` (the same enrolment, then ``tunnel_port: 0`` in its agent.json, so
``AgentConfig.routes == ["https"]``). Which TCP port each agent process is
connected to is checked from /proc before anything is measured. Then, in one
run and interleaved (ssh, https, https, ssh, ...: the order flips every run so
neither route always goes first on a machine shared with other work):

* bulk throughput through the product's bulk path, the screen channel
  (``bench.bulk``'s machinery: WebSocket → broker's RFB relay → tunnel →
  agent → ``bench/rfbsink.py``), download and upload, with the broker's and
  the agent's CPU ms per MB (the bridge's copies show there);
* keystroke echo p50/p99 (``bench.latency``'s loop: a consented shell, raw
  PTY, ``cat``, one byte at a time over the terminal WebSocket);
* at N agents (``--agents``, default 5,000; ``--quick`` 1,000), from
  ``bench.routes_fleet``: broker CPU per handshake, broker RSS and file
  descriptors per idle agent, idle CPU, for each route on a fresh broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from allowhelp.agent.config import AgentConfig
from bench import bulk, latency, routes_fleet
from bench.bulk import SINK, cpu_seconds, download, open_rfb, open_screen, upload
from bench.common import Procs, fmt, log, median, table, wait_for
from bench.stack import ADMIN, ADMIN_PW, TECH, TECH_PW, Agent, Broker, Desk, Installation

ROUTES = ("ssh", "https")
MIB = 1024 * 1024


def order(run: int) -> tuple[str, ...]:
    """ssh, https on even runs, https, ssh on odd ones."""
    return ROUTES if run % 2 == 0 else ROUTES[::-1]


def https_only(config_dir: Path) -> None:
    """Rewrite an enrolled agent's agent.json (with the product's own writer, 0600 and
    atomic) so the raw SSH port is gone and only the HTTPS route is left."""
    config = AgentConfig.load(config_dir)
    changed = dataclasses.replace(config, tunnel_host="", tunnel_port=0)
    if changed.routes != ["https"]:
        raise RuntimeError(f"the broker offered no HTTPS route (routes {changed.routes})")
    changed.save(config_dir)


def tcp_remote_ports(pid: int) -> set[int]:
    """Remote ports of the established TCP connections process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().as_posix()
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: set[int] = set()
    for table_name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table_name}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and cols[9] in inodes:  # 01: ESTABLISHED
                    ports.add(int(cols[2].rsplit(":", 1)[1], 16))
    return ports


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def start_pair(procs: Procs, root: Path, levers: list[str]) -> dict[str, Installation]:
    """One broker, one agent per route, both online, a technician logged in."""
    broker = Broker(procs, root / "broker", list(levers)).start()
    broker.add_users()
    env = {"ALLOWHELP_TEST_SCREEN_COMMAND": shlex.join(SINK)}
    agents: dict[str, Agent] = {}
    for route in ROUTES:
        agent = Agent(procs, root / f"agent-{route}", list(levers), env)
        agent.enroll(broker.token())
        if route == "https":
            https_only(agent.config)
        agents[route] = agent.start()
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        wait_for(
            lambda: all(
                any(a["id"] == agent.agent_id and a["online"] for a in admin.agents())
                for agent in agents.values()
            ),
            60,
            "both agents to come online",
            step=0.2,
        )
    finally:
        admin.close()
    want = {"ssh": port_of(broker.tunnel), "https": port_of(broker.https)}
    for route, agent in agents.items():
        assert agent.proc is not None
        ports = tcp_remote_ports(agent.proc.pid)
        other = want["https" if route == "ssh" else "ssh"]
        if want[route] not in ports or other in ports:
            raise RuntimeError(f"the {route} agent is connected to ports {ports}, not {want}")
    log(f"agents online: ssh → port {want['ssh']}, https → port {want['https']}")
    desk = Desk.login(broker, TECH, TECH_PW)
    return {route: Installation(broker, agent, desk) for route, agent in agents.items()}


async def measure_bulk(installs: dict[str, Installation], size: int, runs: int) -> dict[str, Any]:
    """Screen-channel MB/s per route and direction, and CPU ms/MB of broker and agent."""
    mbs: dict[str, dict[str, list[float]]] = {r: {"down": [], "up": []} for r in installs}
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {
        r: {"down": {}, "up": {}} for r in installs
    }
    async with AsyncExitStack() as stack:
        streams = {r: await open_screen(i, stack) for r, i in installs.items()}
        inits = {}
        for route, stream in streams.items():
            inits[route] = await open_rfb(stream)
            await download(stream, inits[route], 4 * MIB)  # warm-up, not counted
            await upload(stream, inits[route], 4 * MIB)
        watched = {}
        for route, install in installs.items():
            assert install.agent.proc is not None
            watched[route] = {"broker": install.broker.pid, "agent": install.agent.proc.pid}
        for i in range(runs):
            for direction, move in (("down", download), ("up", upload)):
                for route in order(i):
                    before = cpu_seconds(watched[route])
                    nbytes, seconds = await move(streams[route], inits[route], size)
                    after = cpu_seconds(watched[route])
                    mbs[route][direction].append(nbytes / seconds / 1e6)
                    for proc, t in after.items():
                        per_mb = (t - before[proc]) / (nbytes / 1e6)
                        cpu[route][direction].setdefault(proc, []).append(per_mb)
            now = "; ".join(f"{r} {v['down'][-1]:.0f}/{v['up'][-1]:.0f}" for r, v in mbs.items())
            log(f"routes bulk run {i + 1}/{runs} (MB/s down/up) {now}")
    return {
        "bytes": size,
        "runs": runs,
        "samples_mb_s": mbs,
        "median_mb_s": {r: {d: median(v) for d, v in by.items()} for r, by in mbs.items()},
        "cpu_ms_per_mb": {
            r: {d: {p: round(median(v) * 1000, 3) for p, v in ps.items()} for d, ps in by.items()}
            for r, by in cpu.items()
        },
    }


def measure_echo(installs: dict[str, Installation], count: int, runs: int) -> dict[str, Any]:
    per_run: list[dict[str, dict[str, float]]] = []
    for i in range(runs):
        row = {
            route: latency.summary(latency.allowhelp_rtts(installs[route], count))
            for route in order(i)
        }
        per_run.append(row)
        log(
            f"routes echo run {i + 1}/{runs} p50/p99 ms "
            + "; ".join(f"{r} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for r, v in row.items())
        )
    return {
        "round_trips_per_run": count,
        "runs": runs,
        "per_run": per_run,
        "median": {
            r: {k: median([row[r][k] for row in per_run]) for k in per_run[0][r]} for r in ROUTES
        },
    }


def run(
    procs: Procs,
    root: Path,
    *,
    quick: bool,
    sizes: list[int],
    levers: list[str] | None = None,
) -> dict[str, Any]:
    levers = list(levers or [])
    result: dict[str, Any] = {"levers": levers, "bulk_path": bulk.OURS, "sink": shlex.join(SINK)}
    t0 = time.monotonic()
    installs = start_pair(procs, root / "pair", levers)
    try:
        size = (64 if quick else 256) * MIB
        result["bulk"] = asyncio.run(measure_bulk(installs, size, 3 if quick else 5))
        result["echo"] = measure_echo(installs, 1000 if quick else 2000, 2 if quick else 6)
    finally:
        installs["ssh"].close()  # the desk both share
        installs["ssh"].broker.stop()
    result["pair_seconds"] = round(time.monotonic() - t0, 1)
    n = sizes[0] if sizes else (1000 if quick else 5000)
    result["fleet"] = routes_fleet.run(procs, root / "fleet", n, quick=quick, levers=levers)
    return result


# --- the report ----------------------------------------------------------------


def _row(name: str, ssh: float | None, https: float | None, digits: int = 1) -> list[str]:
    ratio = https / ssh if ssh and https is not None else None
    return [name, fmt(ssh, digits), fmt(https, digits), fmt(ratio, 2)]


def report(res: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    b = res["bulk"]
    for d, word in (("down", "download"), ("up", "upload")):
        med = b["median_mb_s"]
        rows.append(_row(f"bulk {word} MB/s", med["ssh"][d], med["https"][d]))
        for proc in ("broker", "agent"):
            cpu = b["cpu_ms_per_mb"]
            rows.append(
                _row(f"  {proc} CPU ms/MB {word}", cpu["ssh"][d][proc], cpu["https"][d][proc], 2)
            )
    e = res["echo"]["median"]
    for key in ("p50_ms", "p99_ms"):
        rows.append(_row(f"keystroke echo {key[:3]} ms", e["ssh"][key], e["https"][key], 3))
    fl = res["fleet"]
    for key, name, digits in routes_fleet.FIGURES:
        vals = [fl["routes"][r].get(key) for r in ROUTES]
        rows.append(_row(name, vals[0], vals[1], digits))
    text = table(["figure", "ssh (raw port)", "https (WebSocket)", "https/ssh"], rows)
    text += (
        f"\nbulk: screen channel to an RFB sink, {b['bytes'] // MIB} MiB x {b['runs']} runs;"
        f" echo: {res['echo']['round_trips_per_run']} round trips x {res['echo']['runs']} runs;"
        f" fleet: {fl['agents']:,} agents per route, {fl['rounds']} round(s), medians"
    )
    for note in fl.get("notes", []):
        text += f"\n{note}"
    return text
