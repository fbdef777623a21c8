"""Fleet scale: N idle agents held by one broker, and the way back after ``kill -9``.

For each N: a fresh broker; N Ed25519 host keys enrolled through the real
``POST /api/v1/enrol`` (multi-use tokens from ``allowhelp-broker token create
--uses``; keep-alive HTTPS connections, 32 in parallel, instead of the agent
CLI's two fresh TLS connections per PC — same endpoint, same checks, same
audit record); the broker is then restarted cleanly so the baseline RSS is a
fresh broker's with N agents on file. Then ``bench.fleet_worker`` processes
bring all agents up with the product's own tunnel code (ramped), and we read:

* broker RSS per agent (VmRSS with all N online minus before, / N);
* handshakes per second (N / time from the first worker start to the last
  control channel opened) and broker CPU seconds per handshake (utime+stime
  over the fill / N), so the rate one dedicated core could sustain is 1/that;
* idle cost: broker CPU % with N idle agents (each agent sends a keepalive every
  15 s and the broker answers; the broker sends its own only after 20 s of silence);
* ``GET /api/v1/agents`` latency with N rows;
* ``kill -9`` of the broker, restart on the same ports and data folder, and the
  time until all N are back online (API count), with the distribution of each
  agent's own reconnect time from the workers' timestamps (none starved).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from allowhelp.certs.pki import ca_fingerprint
from allowhelp.certs.token import EnrolmentToken
from bench.common import (
    FD_HEADROOM,
    PY,
    Procs,
    log,
    percentile,
    proc_stat,
    wait_for,
)
from bench.nofile import raise_nofile
from bench.pyspy import STORM_PARTS, Profiler, split, summarise
from bench.stack import ADMIN, ADMIN_PW, Broker, Desk

MAX_USES = 10_000
ENROL_PARALLEL = 32


async def _enrol_all(
    broker: Broker, tokens: list[str], keys: list[str], names: list[str]
) -> list[dict[str, Any]]:
    secrets = [EnrolmentToken.decode(t).secret for t in tokens]
    sem = asyncio.Semaphore(ENROL_PARALLEL)
    limits = httpx.Limits(max_connections=ENROL_PARALLEL, max_keepalive_connections=ENROL_PARALLEL)
    async with httpx.AsyncClient(
        base_url=broker.url, verify=broker.ssl_context(), timeout=120, limits=limits
    ) as client:

        async def one(i: int) -> dict[str, Any]:
            body = {
                "secret": secrets[i // MAX_USES],
                "host_key": keys[i],
                "hostname": names[i],
                "os": "bench",
                "user": "bench",
                "version": "bench",
            }
            why = "no answer"
            async with sem:
                for attempt in range(5):
                    try:
                        answer = await client.post("/api/v1/enrol", json=body)
                    except httpx.RemoteProtocolError as exc:  # a keep-alive connection closed
                        why = str(exc)
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    why = f"{answer.status_code} {answer.text}"
                    if answer.status_code == 201:
                        reply: dict[str, Any] = answer.json()
                        return reply
                    if answer.status_code < 500 and answer.status_code != 429:
                        break
                    await asyncio.sleep(0.5 * (attempt + 1))
                raise RuntimeError(f"enrol {i} refused: {why}")

        return list(await asyncio.gather(*(one(i) for i in range(len(keys)))))


def source_address(i: int) -> str:
    """Agent i's own loopback address: each simulated PC dials from its own IP."""
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}"


def _make_keys(folder: Path, count: int) -> tuple[list[Path], list[str]]:
    folders: list[Path] = []
    lines: list[str] = []
    for i in range(count):
        key = asyncssh.generate_private_key("ssh-ed25519")
        agent_dir = folder / f"a{i:05d}"
        agent_dir.mkdir(parents=True, mode=0o700)
        path = agent_dir / "host_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key("openssh"))
        folders.append(agent_dir)
        lines.append(key.export_public_key("openssh").decode().strip())
    return folders, lines


def _online(desk: Desk) -> tuple[int, float]:
    t0 = time.perf_counter()
    rows = desk.agents()
    return sum(1 for row in rows if row.get("online")), time.perf_counter() - t0


def _workers_report(workers: list[tuple[Any, Path]]) -> list[dict[str, Any]]:
    before = [path.stat().st_mtime_ns if path.exists() else 0 for _, path in workers]
    for proc, _ in workers:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGUSR1)
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    for (_proc, path), old in zip(workers, before, strict=True):
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_mtime_ns > old:
                break
            time.sleep(0.05)
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            reports.append({"attaches": {}, "errors": {}, "rss_kib": 0, "cpu_s": 0.0})
    return reports


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def _wait_online(
    desk: Desk, n: int, timeout: float, step: float, since: float
) -> tuple[float | None, list[tuple[float, int]], float]:
    """Poll the API until n online; (seconds until all, timeline, slowest API call)."""
    deadline = time.monotonic() + timeout
    timeline: list[tuple[float, int]] = []
    slowest = 0.0
    while time.monotonic() < deadline:
        try:
            count, took = _online(desk)
        except httpx.HTTPError:
            time.sleep(step)
            continue
        slowest = max(slowest, took)
        now = time.time()
        timeline.append((round(now - since, 2), count))
        if count >= n:
            return now - since, timeline, slowest
        time.sleep(step)
    return None, timeline, slowest


def one_size(
    procs: Procs,
    root: Path,
    n: int,
    *,
    quick: bool,
    levers: list[str] | None,
    profile: Path | None = None,
    launcher: list[str] | None = None,
    on_ready: Callable[[int], object] | None = None,
    on_filled: Callable[[int], object] | None = None,
    profile_restart: Path | None = None,
) -> dict[str, Any]:
    """One fleet size, start to finish. ``profile`` (py-spy output) or ``on_filled``
    stop it after the fill; ``launcher`` and the hooks serve the memory pass.
    ``profile_restart``: py-spy the restarted broker through the reconnect storm."""
    result: dict[str, Any] = {"agents": n}
    limit = raise_nofile()  # what the broker will get too: it inherits our limits
    if n + FD_HEADROOM > limit:
        raise RuntimeError(
            f"{n} agents do not fit in one broker process here: it holds one socket per"
            f" agent and RLIMIT_NOFILE is capped at {limit} (the hard limit cannot be raised"
            " without CAP_SYS_RESOURCE); past it accept() fails with EMFILE"
        )
    folder = root / f"fleet-{n}"
    broker = Broker(procs, folder / "broker", list(levers or []))
    if launcher is not None:
        broker.launcher = launcher
    broker.start()
    broker.add_users()
    tokens = [broker.token(uses=min(MAX_USES, n - i), ttl="2h") for i in range(0, n, MAX_USES)]
    log(f"fleet {n}: making {n} host keys")
    folders, keys = _make_keys(folder / "agents", n)
    log(f"fleet {n}: enrolling {n} agents through POST /api/v1/enrol")
    t0 = time.perf_counter()
    replies = asyncio.run(_enrol_all(broker, tokens, keys, [f"bench-{i:05d}" for i in range(n)]))
    result["enrol_per_s"] = n / (time.perf_counter() - t0)
    log(f"fleet {n}: {result['enrol_per_s']:.0f} enrolments/s; restarting the broker clean")
    broker.stop()
    broker.start()
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
    per_worker = 2500 if n > 5000 else 500
    nworkers = max(2, math.ceil(n / per_worker))
    ramp = 16
    workers: list[tuple[Any, Path]] = []
    admin = Desk.login(broker, ADMIN, ADMIN_PW, timeout=30)
    try:
        time.sleep(2)
        if on_ready is not None:
            on_ready(broker.pid)
        base = proc_stat(broker.pid)
        result["broker_rss_idle_kib"] = base.rss_kib
        log(f"fleet {n}: starting {nworkers} agent processes (ramp {ramp} each)")
        profiler = None
        if profile is not None:
            profiler = Profiler(procs, broker.pid, profile)
        start = time.time()
        for w in range(nworkers):
            chunk = range(w * per_worker, min(n, (w + 1) * per_worker))
            spec = folder / f"worker{w}.json"
            spec.write_text(
                json.dumps(
                    {
                        "config": shared,
                        "ramp": ramp,
                        "agents": [
                            [replies[i]["agent_id"], str(folders[i]), source_address(i)]
                            for i in chunk
                        ],
                    }
                )
            )
            report = folder / f"worker{w}.report.json"
            proc = procs.start(
                [PY, "-m", "bench.fleet_worker", str(spec), str(report)],
                log_path=folder / f"worker{w}.log",
            )
            workers.append((proc, report))
        fill_timeout = max(120.0, n / 50)
        poll = 2.0 if n <= 5000 else 5.0  # one GET of 20k rows costs the broker ~0.4 s
        all_in, fill_timeline, _ = _wait_online(admin, n, fill_timeout, poll, start)
        after_fill = proc_stat(broker.pid)
        if profiler is not None:
            profiler.stop()
        if on_filled is not None:
            on_filled(broker.pid)
            result["broker_rss_per_agent_kib"] = (after_fill.rss_kib - base.rss_kib) / n
        if profiler is not None or on_filled is not None:
            return result | {"fill_seconds": all_in}
        reports = _workers_report(workers)
        firsts = [min(v) for r in reports for v in r["attaches"].values() if v]
        result["fill"] = {
            "all_online": all_in is not None,
            "online": len(firsts),
            "seconds": (max(firsts) - start) if firsts else None,
            "api_seconds": all_in,
            "timeline": fill_timeline,
        }
        if firsts:
            result["handshakes_per_s"] = len(firsts) / (max(firsts) - start)
            result["broker_cpu_ms_per_handshake"] = (
                (after_fill.cpu_s - base.cpu_s) / len(firsts) * 1000
            )
        log(f"fleet {n}: fill {result['fill']['seconds']} s, idling")
        idle_s = 10 if quick else 30
        i0 = proc_stat(broker.pid)
        time.sleep(idle_s)
        i1 = proc_stat(broker.pid)
        result["broker_rss_kib"] = i1.rss_kib
        online_now, took = _online(admin)
        result["online_after_idle"] = online_now
        result["api_agents_seconds"] = took
        result["broker_rss_per_agent_kib"] = (i1.rss_kib - base.rss_kib) / max(1, len(firsts))
        result["broker_idle_cpu_percent"] = (i1.cpu_s - i0.cpu_s) / idle_s * 100
        wr = _workers_report(workers)
        result["agent_process_rss_per_agent_kib"] = sum(r["rss_kib"] for r in wr) / n
        if online_now < n:
            log(f"fleet {n}: only {online_now}/{n} online before the kill")
        # kill -9 and restart on the same ports and data folder
        log(f"fleet {n}: kill -9 the broker and restart it")
        admin.close()
        t_kill = time.time()
        broker.kill9()
        broker.start(timeout=120)
        t_ready = time.time()
        result["restart_ready_s"] = t_ready - t_kill
        storm = None if profile_restart is None else Profiler(procs, broker.pid, profile_restart)
        r0 = proc_stat(broker.pid)
        w0 = sum(proc_stat(p.pid).cpu_s for p, _ in workers if p.poll() is None)
        admin = Desk.login(broker, ADMIN, ADMIN_PW, timeout=30)
        back_all, back_timeline, slowest = _wait_online(
            admin, n, 240 if not quick else 180, poll, t_kill
        )
        r1 = proc_stat(broker.pid)
        w1 = sum(proc_stat(p.pid).cpu_s for p, _ in workers if p.poll() is None)
        if storm is not None:
            storm.stop()
        spent = max(1e-3, time.time() - t_ready)
        reports = _workers_report(workers)
        back = [
            min(t for t in v if t > t_kill) - t_kill
            for r in reports
            for v in r["attaches"].values()
            if any(t > t_kill for t in v)
        ]
        errors: dict[str, int] = {}
        for r in reports:
            for err in r["errors"].values():
                errors[err] = errors.get(err, 0) + 1
        result["restart"] = {
            "all_back": back_all is not None,
            "api_seconds_all_back": back_all,
            "back": len(back),
            "not_back": n - len(back),
            "reconnect_s": _dist(back),
            "timeline": back_timeline,
            "slowest_api_call_s": slowest,
            "broker_cpu_percent": (r1.cpu_s - r0.cpu_s) / spent * 100,
            # all the broker did from ready to all back (API polls included), per agent
            "broker_cpu_ms_per_reconnect": (r1.cpu_s - r0.cpu_s) / max(1, len(back)) * 1000,
            "agent_processes_cpu_percent": (w1 - w0) / spent * 100,
            "last_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        }
        log(
            f"fleet {n}: back {len(back)}/{n}, all-back {back_all}, "
            f"p99 {result['restart']['reconnect_s'].get('p99')}"
        )
    finally:
        admin.close()
        for proc, _ in workers:  # all at once: each may take a while to close its tunnels
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in workers:
            procs.stop(proc, timeout=45)
        broker.stop()
    return result


def run(
    procs: Procs,
    root: Path,
    *,
    quick: bool,
    sizes: list[int],
    levers: list[str] | None = None,
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for n in sizes:
        try:
            results.append(one_size(procs, root, n, quick=quick, levers=levers))
        except Exception as exc:  # report where it broke rather than hide it
            log(f"fleet {n}: FAILED: {exc!r}")
            results.append({"agents": n, "failed": repr(exc)})
    return {"sizes": results, "levers": levers or []}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.fleet N --profile-restart FILE``: one fleet size with py-spy
    on the restarted broker through the reconnect storm (not a measured run: py-spy
    takes CPU too); prints the result and py-spy's summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=main.__doc__)
    parser.add_argument("agents", type=int)
    parser.add_argument("--profile-restart", type=Path, required=True, metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="ah-storm-"))
    try:
        res = one_size(
            procs, root, args.agents, quick=False, levers=[], profile_restart=args.profile_restart
        )
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    res["profile"] = summarise(args.profile_restart, top=30)
    res["storm_split"] = split(args.profile_restart, STORM_PARTS)
    print(json.dumps(res, indent=1))
    return 0


__all__ = ["main", "run", "wait_for"]

if __name__ == "__main__":
    raise SystemExit(main())
