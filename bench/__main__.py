# ruff: noqa: PLC0415 - each section imports its module only when it runs
"""``python -m bench`` (or ``bench/run``): run the benchmarks, print tables, write JSON.

    bench/run                                  # everything, full size
    bench/run --quick                          # smaller sizes, fewer runs (a few minutes)
    bench/run --only throughput,latency        # a subset
    bench/run --only bulk                      # screen channel vs ssh -L (issue #8)
    bench/run --only fleet --agents 1000,5000  # fleet sizes
    bench/run --only routes --agents 5000      # tunnel: raw SSH port vs HTTPS port (issue #16)
    bench/run --only nodes --agents 300        # three nodes on PostgreSQL, one killed (#21)
    bench/run --lever uvloop --lever pktsize=131072   # measure a proposed change

Sections: throughput, bulk, tunnel, latency, fleet, audit, profile, memory, routes (and peers,
only when named: allowhelp vs MeshCentral, issue #19; and nodes, only when named: three
broker nodes on PostgreSQL, one killed under its agents, issue #21). Results go to
``bench/results/latest.json`` (and a timestamped copy) unless ``--json`` says
otherwise. Every process is started on 127.0.0.1 under a temp folder and
stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    FD_HEADROOM,
    ROOT,
    Procs,
    dump_json,
    fmt,
    log,
    machine,
    table,
    versions,
)
from bench.nofile import raise_nofile

SECTIONS = (
    "throughput",
    "bulk",
    "tunnel",
    "latency",
    "fleet",
    "audit",
    "profile",
    "memory",
    "routes",
    "peers",
    "nodes",
)
# peers: MeshCentral from npm; nodes: a PostgreSQL cluster (initdb) and three brokers
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("peers", "nodes"))
FLEET_SIZES = "1000,5000,20000"
FLEET_DEFAULT = [int(x) for x in FLEET_SIZES.split(",")]  # nodes: --agents not given
ROUTES_AGENTS = 5000  # --quick: 1000


LEVERS = ("pktsize", "ws", "gc-threshold")


def _levers(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if value in ("uvloop", "no-uvloop", "wstransport"):
            out.append(f"--{value}")
        elif "=" in value and value.split("=", 1)[0] in LEVERS:
            name, arg = value.split("=", 1)
            out += [f"--{name}", arg]
        else:
            raise SystemExit(
                f"unknown lever {value!r} (uvloop, no-uvloop, wstransport,"
                f" {', '.join(LEVERS)}=VALUE)"
            )
    return out


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def report_throughput(res: dict[str, Any]) -> str:
    med = res["median_mb_s"]
    ref = med.get("ssh -L (default cipher)")
    pty = med.get("ssh -tt through a PTY")
    ours = med["allowhelp (WS→broker→SSH→agent→PTY)"]
    rows = []
    for name, by_dir in med.items():
        for d in ("down", "up"):
            ratio = by_dir[d] / ref[d] if ref else None
            ratio_pty = by_dir[d] / pty[d] if pty else None
            rows.append(
                [
                    name,
                    "download" if d == "down" else "upload",
                    fmt(by_dir[d]),
                    fmt(ratio, 2),
                    fmt(ratio_pty, 2),
                ]
            )
    text = table(["path", "direction", "MB/s (median)", "x ssh -L", "x ssh -tt PTY"], rows)
    if ref:
        ok = all(ours[d] >= ref[d] for d in ("down", "up"))
        text += (
            f"\nGoal ≥ 1.0x ssh -L (OpenSSH default cipher: {res.get('openssh_default_cipher')}):"
            f" {verdict(ok)}"
        )
    return text


def report_bulk(res: dict[str, Any]) -> str:
    med = res["median_mb_s"]
    ref = med.get("ssh -L (default cipher)")
    rows = [
        [
            name,
            fmt(v["down"]),
            fmt(v["down"] / ref["down"], 2) if ref else "-",
            fmt(v["up"]),
            fmt(v["up"] / ref["up"], 2) if ref else "-",
        ]
        for name, v in med.items()
    ]
    text = table(["path", "download MB/s", "x ssh -L", "upload MB/s", "x ssh -L"], rows)
    text += (
        f"\n{res['screen']} Raw updates down, {res['message_bytes'] // 1024} KiB ClientCutText up;"
        f" {res['bytes'] // 2**20} MiB each way x {res['runs']} runs, medians"
    )
    cpu = res.get("allowhelp_cpu_ms_per_mb", {})
    for d in ("down", "up"):
        per = ", ".join(f"{k} {v:.2f}" for k, v in cpu.get(d, {}).items())
        text += f"\nallowhelp CPU ms/MB {'download' if d == 'down' else 'upload'}: {per}"
    if ref:
        ours = next(iter(med.values()))
        ok = all(ours[d] >= ref[d] for d in ("down", "up"))
        text += (
            f"\nGoal ≥ 1.0x ssh -L (OpenSSH default cipher: {res.get('openssh_default_cipher')}):"
            f" {verdict(ok)}"
        )
    return text


def report_tunnel(res: dict[str, Any]) -> str:
    variants = res["variants"]
    base = next(iter(variants.values()))["median_mb_s"]
    rows = [
        [
            name,
            fmt(v["median_mb_s"]["down"]),
            fmt(v["median_mb_s"]["down"] / base["down"], 2),
            fmt(v["median_mb_s"]["up"]),
            fmt(v["median_mb_s"]["up"] / base["up"], 2),
        ]
        for name, v in variants.items()
    ]
    return table(
        ["asyncssh tunnel alone (no PTY, no WS)", "down MB/s", "x row 1", "up MB/s", "x row 1"],
        rows,
    )


def report_latency(res: dict[str, Any]) -> str:
    med = res["median"]
    rows = [
        [name, fmt(v["p50_ms"], 3), fmt(v["p90_ms"], 3), fmt(v["p99_ms"], 3), fmt(v["max_ms"], 2)]
        for name, v in med.items()
    ]
    text = table(["path", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
    if "ssh -tt" in med:
        ratio = med["allowhelp"]["p99_ms"] / med["ssh -tt"]["p99_ms"]
        ratio50 = med["allowhelp"]["p50_ms"] / med["ssh -tt"]["p50_ms"]
        text += (
            f"\np99 ratio {ratio:.2f}x (p50 {ratio50:.2f}x) over {res['round_trips_per_run']}"
            f" round trips x {res['runs']} runs; goal p99 ≤ 2x OpenSSH: {verdict(ratio <= 2)}"
        )
    return text


def report_fleet(res: dict[str, Any]) -> str:
    rows = []
    notes = []
    for s in res["sizes"]:
        if "failed" in s:
            rows.append([s["agents"], "FAILED", "", "", "", "", "", "", ""])
            notes.append(f"{s['agents']} agents failed: {s['failed']}")
            continue
        r = s.get("restart", {})
        dist = r.get("reconnect_s", {})
        rows.append(
            [
                f"{s['agents']:,}",
                fmt(s.get("broker_rss_per_agent_kib")),
                fmt(s.get("handshakes_per_s"), 0),
                fmt(s.get("broker_cpu_ms_per_handshake"), 2),
                fmt(s.get("broker_idle_cpu_percent")),
                fmt(s.get("api_agents_seconds"), 2),
                fmt(r.get("api_seconds_all_back")) if r.get("all_back") else "not all",
                f"{fmt(dist.get('p50'))}/{fmt(dist.get('p99'))}/{fmt(dist.get('max'))}",
                f"{r.get('not_back', '?')}",
            ]
        )
    text = table(
        [
            "agents",
            "broker KiB/agent",
            "handshakes/s",
            "broker CPU ms/handshake",
            "idle CPU %",
            "GET /agents s",
            "all back after kill -9 (s)",
            "reconnect p50/p99/max s",
            "starved",
        ],
        rows,
    )
    ok_rss = [s["broker_rss_per_agent_kib"] <= 20 for s in res["sizes"] if "failed" not in s]
    ok_back = [
        bool(s.get("restart", {}).get("all_back"))
        and (s["restart"].get("api_seconds_all_back") or 1e9) <= 60
        for s in res["sizes"]
        if "failed" not in s
    ]
    text += (
        f"\nGoal ≤ 20 KiB/agent: {verdict(all(ok_rss) if ok_rss else None)};"
        f" all back within 60 s, none starved: {verdict(all(ok_back) if ok_back else None)}"
    )
    for note in notes:
        text += f"\n{note}"
    return text


def report_audit(res: dict[str, Any]) -> str:
    rows = [
        [name, fmt(v["per_s"], 0)]
        for name, v in res.items()
        if isinstance(v, dict) and "per_s" in v
    ]
    return table(["writer", "records/s (median)"], rows) + (
        f"\nfile system: {res['folder_fs']}; raw write+fsync/s before/after:"
        f" {fmt(res.get('fsync_per_s_before'), 0)}/{fmt(res.get('fsync_per_s_after'), 0)}"
    )


def report_profile(res: dict[str, Any]) -> str:
    parts = []
    for name, summary in res.items():
        if not isinstance(summary, dict) or not summary.get("samples"):
            continue
        comps = ", ".join(f"{k} {v}%" for k, v in summary["component_percent"][:6])
        tops = "; ".join(f"{k} {v}%" for k, v in summary["self_percent"][:6])
        parts.append(
            f"{name} ({summary['samples']} samples)\n  by component: {comps}\n  top self: {tops}"
        )
    return "\n".join(parts)


def report_memory(res: dict[str, Any]) -> str:
    rows = [[k, fmt(v / 1024, 2)] for k, v in res["by_line_bytes_per_agent"][:15]]
    text = table(["allocation site (innermost frame, via allowhelp frame)", "KiB/agent"], rows)
    return text + (
        f"\ntraced by Python: {res['traced_kib_per_agent']:.1f} KiB/agent"
        f" ({res['agents']} agents; RSS in this traced run"
        f" {fmt(res.get('rss_kib_per_agent_traced_run'))} KiB/agent)"
    )


def report_routes(res: dict[str, Any]) -> str:
    from bench import routes

    return routes.report(res)


def report_peers(res: dict[str, Any]) -> str:
    from bench.peers import run as peers

    text = table(["figure", "allowhelp", "MeshCentral", "ssh -tt"], peers.table(res))
    for what, why in res.get("notes", {}).items():
        text += f"\nnull: {what}: {why}"
    return text


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def fleet_size(text: str) -> int:
    """A number of agents, or ``max``: the most one broker process can hold here (fds)."""
    if text == "max":
        return raise_nofile() - FD_HEADROOM
    return int(text)


def report_nodes(res: dict[str, Any]) -> str:
    rows = [
        [
            f"{x['order']}",
            fmt(x["all_back_s"], 1),
            f"{x['on_a']} / {x['on_c']}",
            fmt(x["reconnect_s"].get(50), 2),
            fmt(x["reconnect_s"].get(90), 2),
            fmt(x["reconnect_s"].get(99), 2),
        ]
        for x in res["rounds"]
    ]
    text = table(["order", "all back s", "on A / on C", "own p50 s", "p90 s", "p99 s"], rows)
    for order, s in res["summary"].items():
        text += (
            f"\n{order}: all back in {fmt(s['all_back_s_median'], 1)} s (median of"
            f" {s['rounds']}), largest share on one node {fmt(s['largest_share_median'], 2)}"
        )
    return text + f"\n{res['agents']} agents on node B of three, B killed with -9 each round"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections ({','.join(SECTIONS)}; peers only when named)",
    )
    parser.add_argument(
        "--agents",
        default=None,
        help=f"fleet sizes (default {FLEET_SIZES}); 'max' = the most the fd limit lets one"
        f" broker hold; routes: the first one (default {ROUTES_AGENTS:,}, --quick 1,000)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument(
        "--lever",
        action="append",
        default=[],
        help="measure a proposed change (repeatable): uvloop, no-uvloop, wstransport,"
        " pktsize=BYTES, ws=IMPL, gc-threshold=N (see bench/launch.py)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}")
    sizes = [fleet_size(x.strip()) for x in (args.agents or FLEET_SIZES).split(",") if x.strip()]
    routes_agents = ROUTES_AGENTS if not args.quick else 1000
    if args.agents is not None and sizes:
        routes_agents = sizes[0]
    levers = _levers(args.lever)
    # `kill PID` (or Ctrl-C, even from a background job) still stops every process started
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
        "levers": args.lever,
    }
    out = args.json or ROOT / "bench" / "results" / "latest.json"
    tmp = Path(tempfile.mkdtemp(prefix="allowhelp-bench-"))
    log(f"working in {tmp}")
    procs = Procs()
    reports: list[tuple[str, str]] = []
    try:
        for section in only:
            t0 = time.monotonic()
            log(f"== {section}")
            try:
                want = [routes_agents] if section == "routes" else sizes
                res = _run_section(section, procs, tmp / section, args.quick, want, levers)
            except Exception as exc:  # one broken section must not hide the others
                log(f"{section} FAILED: {exc!r}")
                results[section] = {"failed": repr(exc)}
                reports.append((section, f"FAILED: {exc!r}"))
                continue
            finally:
                procs.close()
            res["seconds"] = round(time.monotonic() - t0, 1)
            results[section] = res
            reports.append((section, REPORTERS[section](res)))
            dump_json(out, results)
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    dump_json(out, results)
    if args.json is None:
        dump_json(out.with_name(time.strftime("%Y%m%d-%H%M%S") + ".json"), results)
    m = results["machine"]
    print(
        f"\nallowhelp benchmarks — {m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}; levers: {', '.join(args.lever) or 'none (product as is)'}"
    )
    for section, text in reports:
        print(f"\n## {section}\n{text}")
    print(f"\nJSON: {out}")
    return 0


def _run_section(
    section: str, procs: Procs, root: Path, quick: bool, sizes: list[int], levers: list[str]
) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    if section == "throughput":
        from bench import throughput

        return throughput.run(procs, root, quick=quick, levers=levers)
    if section == "bulk":
        from bench import bulk

        return bulk.run(procs, root, quick=quick, levers=levers)
    if section == "latency":
        from bench import latency

        return latency.run(procs, root, quick=quick, levers=levers)
    if section == "fleet":
        from bench import fleet

        return fleet.run(procs, root, quick=quick, sizes=sizes, levers=levers)
    if section == "tunnel":
        from bench import sshpipe

        return sshpipe.run(procs, root, quick=quick)
    if section == "audit":
        from bench import audit

        return audit.run(root, quick=quick)
    if section == "memory":
        from bench import memory

        return memory.run(procs, root, n=500 if quick else 1000)
    if section == "routes":
        from bench import routes

        return routes.run(procs, root, quick=quick, sizes=sizes, levers=levers)
    if section == "peers":
        from bench.peers import run as peers

        return peers.run(procs, root, quick=quick)
    if section == "nodes":
        from bench import nodes

        return nodes.run(procs, root, quick=quick, sizes=sizes if sizes != FLEET_DEFAULT else [])
    from bench import profiling

    why = profiling.available()
    if why:
        raise RuntimeError(why)
    return profiling.run(procs, root, quick=quick, levers=levers)


REPORTERS = {
    "throughput": report_throughput,
    "bulk": report_bulk,
    "tunnel": report_tunnel,
    "latency": report_latency,
    "fleet": report_fleet,
    "audit": report_audit,
    "profile": report_profile,
    "memory": report_memory,
    "peers": report_peers,
    "routes": report_routes,
    "nodes": report_nodes,
}


if __name__ == "__main__":
    sys.exit(main())
