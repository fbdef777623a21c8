"""The ``routes`` section's fleet part: N idle agents on one broker, by the raw SSH port
or by the HTTPS port, what each costs the broker.

N agents are enrolled once (``bench.fleet``'s way: real ``POST /api/v1/enrol``).
Then, per round and route (ssh, https, then https, ssh, ...), on a freshly
restarted broker: ``bench.fleet_worker`` processes bring all N up with the
product's own tunnel code, the route chosen by their configuration exactly as
a PC's (``tunnel_port: 0`` and a ``tunnel_url``: the HTTPS route alone), and
we read from /proc:

* broker CPU ms per handshake: utime+stime over the fill, less what the agents
  already up cost meanwhile at the idle rate measured next (keepalives), / agents
  that came up (the HTTPS route's TLS handshake and WebSocket upgrade included);
  the fill is watched through the workers' reports, not the broker's API;
* broker RSS KiB per idle agent (VmRSS after an idle spell minus before the fill);
* broker file descriptors per agent (``/proc/PID/fd`` after minus before): the
  raw port costs one socket, the HTTPS route the TCP socket plus a socketpair;
  this sizes ``LimitNOFILE``;
* broker idle CPU %, and the agent processes' CPU per handshake (their
  interpreter start-up included: about 0.5 s per 500 agents), RSS and fds per agent.

"handshakes/s during the fill" is the simulator's rate more than the broker's:
500 agents share one worker process, and its CPU (TLS, each HTTPS-route agent
building its TLS context) is what limits the fill on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from allowhelp.certs.pki import ca_fingerprint
from bench import fleet
from bench.common import (
    FD_HEADROOM,
    PY,
    Procs,
    log,
    median,
    proc_stat,
    wait_for,
)
from bench.nofile import raise_nofile
from bench.stack import ADMIN, ADMIN_PW, Broker, Desk

ROUTES = ("ssh", "https")
FDS_PER_AGENT = {"ssh": 1, "https": 3}  # what the broker holds per connected agent
PER_WORKER = 500
RAMP = 16
FIGURES = (  # (key, row name, digits), in report order
    ("broker_cpu_ms_per_handshake", "broker CPU ms per handshake", 2),
    ("agent_cpu_ms_per_handshake", "agent processes' CPU ms per handshake", 2),
    ("handshakes_per_s", "handshakes/s during the fill", 0),
    ("broker_rss_per_agent_kib", "broker RSS KiB per idle agent", 1),
    ("broker_fds_per_agent", "broker fds per agent", 2),
    ("broker_idle_cpu_percent", "broker idle CPU %", 1),
    ("agent_rss_per_agent_kib", "agent processes' RSS KiB per agent", 1),
    ("agent_fds_per_agent", "agent processes' fds per agent", 2),
)


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def route_config(shared: dict[str, Any], route: str, tunnel_url: str) -> dict[str, Any]:
    """The shared agent configuration for one route (the worker's agents read nothing else)."""
    if route == "ssh":
        return shared | {"tunnel_url": ""}
    return shared | {"tunnel_host": "", "tunnel_port": 0, "tunnel_url": tunnel_url}


def _start_workers(
    procs: Procs, folder: Path, config: dict[str, Any], agents: list[list[str]]
) -> list[tuple[Any, Path]]:
    workers: list[tuple[Any, Path]] = []
    count = max(2, math.ceil(len(agents) / PER_WORKER))
    size = math.ceil(len(agents) / count)
    for w in range(count):
        spec = folder / f"worker{w}.json"
        spec.write_text(
            json.dumps(
                {"config": config, "ramp": RAMP, "agents": agents[w * size : (w + 1) * size]}
            )
        )
        report = folder / f"worker{w}.report.json"
        proc = procs.start(
            [PY, "-m", "bench.fleet_worker", str(spec), str(report)],
            log_path=folder / f"worker{w}.log",
        )
        workers.append((proc, report))
    return workers


def _stop_workers(procs: Procs, workers: list[tuple[Any, Path]]) -> None:
    for proc, _ in workers:  # all at once: each may take a while to close its tunnels
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in workers:
        procs.stop(proc, timeout=45)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _wait_attached(workers: list[tuple[Any, Path]], n: int, timeout: float) -> list[dict[str, Any]]:
    """The workers' reports once all n agents are attached (or at the timeout). Asked of
    the workers (SIGUSR1), not of the broker's API: the broker does nothing but the
    handshakes (and the keepalives of those already up) during the fill."""
    deadline = time.monotonic() + timeout
    for proc, _ in workers:  # SIGUSR1 before a worker catches it would end it
        wait_for(functools.partial(catches, proc.pid, signal.SIGUSR1), 60, "a worker to start")
    while True:
        reports = fleet._workers_report(workers)
        up = sum(1 for r in reports for v in r["attaches"].values() if v)
        if up >= n or time.monotonic() > deadline:
            return reports
        time.sleep(1.0)


def one_round(
    procs: Procs,
    broker: Broker,
    folder: Path,
    route: str,
    config: dict[str, Any],
    agents: list[list[str]],
    idle_s: float,
) -> dict[str, Any]:
    """A fresh broker, N agents by ``route``, the readings; all agents stopped again."""
    n = len(agents)
    folder.mkdir(parents=True, exist_ok=True)
    broker.stop()
    broker.start()
    out: dict[str, Any] = {"route": route}
    admin = Desk.login(broker, ADMIN, ADMIN_PW, timeout=30)
    workers: list[tuple[Any, Path]] = []
    try:
        time.sleep(2)  # let the fresh broker's start-up work settle before the baseline
        base, fds0 = proc_stat(broker.pid), count_fds(broker.pid)
        start = time.time()
        workers = _start_workers(procs, folder, config, agents)
        # HTTPS-route agents cost the simulator's processes far more CPU (TLS): slower fill
        fill_timeout = max(120.0, n / (40 if route == "ssh" else 10))
        reports = _wait_attached(workers, n, fill_timeout)
        filled = proc_stat(broker.pid)
        fill_end = time.time()
        firsts = [min(v) for r in reports for v in r["attaches"].values() if v]
        up = len(firsts)
        online, _ = fleet._online(admin)  # the broker's own count, once the fill is over
        out |= {"online": online, "all_online": online >= n}
        if not firsts:
            raise RuntimeError(f"no agent came up by the {route} route; see {folder}/worker*.log")
        out["fill_seconds"] = max(firsts) - start
        out["handshakes_per_s"] = up / out["fill_seconds"]
        # the workers' own CPU since they started (their interpreter start-up included)
        out["agent_cpu_ms_per_handshake"] = sum(r["cpu_s"] for r in reports) / up * 1000
        i0 = proc_stat(broker.pid)
        time.sleep(idle_s)
        i1, fds1 = proc_stat(broker.pid), count_fds(broker.pid)
        out["broker_rss_kib"] = i1.rss_kib
        out["broker_rss_per_agent_kib"] = (i1.rss_kib - base.rss_kib) / up
        out["broker_fds"] = fds1
        out["broker_fds_per_agent"] = (fds1 - fds0) / up
        out["broker_idle_cpu_percent"] = (i1.cpu_s - i0.cpu_s) / idle_s * 100
        # what the agents already up cost during the fill (keepalives), at the idle rate
        idle_per_agent_s = (i1.cpu_s - i0.cpu_s) / idle_s / up
        agent_seconds = sum(fill_end - t for t in firsts)
        fill_cpu = filled.cpu_s - base.cpu_s
        out["broker_fill_cpu_s"] = fill_cpu
        out["broker_fill_idle_share_s"] = idle_per_agent_s * agent_seconds
        out["broker_cpu_ms_per_handshake"] = (
            (fill_cpu - idle_per_agent_s * agent_seconds) / up * 1000
        )
        live = [p.pid for p, _ in workers if p.poll() is None]
        out["agent_rss_per_agent_kib"] = sum(proc_stat(pid).rss_kib for pid in live) / n
        out["agent_fds_per_agent"] = sum(count_fds(pid) for pid in live) / n
        errors: dict[str, int] = {}
        for r in reports:
            for err in r["errors"].values():
                errors[err] = errors.get(err, 0) + 1
        out["agent_errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5])
        log(
            f"routes fleet {route}: {up}/{n} up in {out['fill_seconds']:.1f} s,"
            f" {out['broker_cpu_ms_per_handshake']:.2f} ms CPU/handshake,"
            f" {out['broker_rss_per_agent_kib']:.1f} KiB/agent,"
            f" {out['broker_fds_per_agent']:.2f} fds/agent"
        )
        return out
    finally:
        admin.close()
        _stop_workers(procs, workers)


def run(procs: Procs, root: Path, n: int, *, quick: bool, levers: list[str]) -> dict[str, Any]:
    limit = raise_nofile()  # the broker inherits it
    if FDS_PER_AGENT["https"] * n + FD_HEADROOM > limit:
        raise RuntimeError(
            f"{n} agents by the HTTPS route do not fit in one broker here: each holds"
            f" {FDS_PER_AGENT['https']} fds and RLIMIT_NOFILE is capped at {limit}"
        )
    folder = root / f"fleet-{n}"
    broker = Broker(procs, folder / "broker", list(levers)).start()
    try:
        broker.add_users()
        tokens = [
            broker.token(uses=min(fleet.MAX_USES, n - i), ttl="2h")
            for i in range(0, n, fleet.MAX_USES)
        ]
        log(f"routes fleet: making and enrolling {n} agents")
        folders, keys = fleet._make_keys(folder / "agents", n)
        names = [f"bench-{i:05d}" for i in range(n)]
        replies = asyncio.run(fleet._enrol_all(broker, tokens, keys, names))
        ca_pem = (broker.data / "ca.pem").read_text()
        host, _, port = replies[0]["tunnel"].rpartition(":")
        shared = {
            "broker_url": broker.url,
            "ca_pem": ca_pem,
            "ca_fingerprint": ca_fingerprint(ca_pem.encode()),
            "tunnel_host": host.strip("[]"),
            "tunnel_port": int(port),
            "broker_tunnel_key": replies[0]["tunnel_key"],
            "organisation": replies[0].get("organisation", ""),
        }
        tunnel_url = str(replies[0]["tunnel_url"])
        agents = [
            [replies[i]["agent_id"], str(folders[i]), fleet.source_address(i)] for i in range(n)
        ]
        rounds = 1 if quick else 2
        per_round: list[dict[str, Any]] = []
        for r in range(rounds):
            for route in ROUTES if r % 2 == 0 else ROUTES[::-1]:
                config = route_config(shared, route, tunnel_url)
                where = folder / f"round{r}-{route}"
                per_round.append(
                    one_round(procs, broker, where, route, config, agents, 10 if quick else 30)
                )
    finally:
        broker.stop()
    by_route: dict[str, dict[str, Any]] = {}
    notes = []
    for route in ROUTES:
        mine = [x for x in per_round if x["route"] == route]
        by_route[route] = {key: median([x[key] for x in mine]) for key, _, _ in FIGURES}
        by_route[route]["broker_rss_kib"] = median([x["broker_rss_kib"] for x in mine])
        short = [x["online"] for x in mine if not x["all_online"]]
        if short:
            notes.append(f"{route}: not all {n} online in some rounds ({short})")
    return {
        "agents": n,
        "rounds": rounds,
        "tunnel_url": tunnel_url,
        "per_round": per_round,
        "routes": by_route,
        "notes": notes,
    }
