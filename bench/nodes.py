"""Three broker nodes on one PostgreSQL: node B killed with -9 under its agents (#21).

    bench/run --only nodes --agents 300 [--quick]

A PostgreSQL cluster made with initdb (``tests/kit/pgkit.py``), nodes A, B and C on
it (B's PKI copied to A and C, as docs/multinode.md says), N agents enrolled on B
through ``POST /api/v1/enrol`` and run by ``bench.fleet_worker`` (the product's own
tunnel, reconnect loop and failover). Each round: every agent online on B and told
the three nodes (``nodes.list``, kept in its ``nodes.json``); B killed with -9; the
time until all N are online on A and C (their consoles' API), how they split, and
each agent's own reconnect time (the workers' timestamps). Then the workers stop,
B starts again, and the next round begins.

Two orders of the nodes, interleaved round by round so that load from other work
on the machine falls on both alike: ``spread`` (the product: each agent its own
order, ``agent/peers.py``) and ``listed`` (the workers told to keep the order the
node gives, as every agent did before: the baseline).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT, Procs, log, percentile
from bench.fleet import _enrol_all, _make_keys, _workers_report, source_address
from bench.stack import ADMIN, ADMIN_PW, Broker, Desk

sys.path.insert(0, str(ROOT / "tests" / "kit"))
import pgkit
from allowhelp.broker.model.database import STORE_ENV
from allowhelp.certs.pki import ca_fingerprint

ORDERS = ("spread", "listed")
PKI = ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key")
PER_WORKER = 500


def _online(desk: Desk) -> set[str]:
    return {str(row["id"]) for row in desk.agents() if row.get("online")}


def _wait(what: str, predicate: Any, timeout: float, step: float = 1.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    log(f"nodes: gave up waiting for {what} after {timeout:.0f} s")
    return None


class Cluster:
    """Nodes A, B, C on one database, N agents enrolled on B."""

    def __init__(self, procs: Procs, root: Path, n: int) -> None:
        self.procs, self.root, self.n = procs, root, n
        # Not under the bench's 0700 folder: the server runs as the postgres user.
        self._pg_root = Path(tempfile.mkdtemp(prefix="ahpg-bench-"))
        self._pg_root.chmod(0o755)
        self.pg = pgkit.make_cluster(self._pg_root / "cluster")
        self._env = os.environ.get(STORE_ENV)
        os.environ[STORE_ENV] = self.pg.database()  # every node and CLI call: the shared store
        self.b = Broker(procs, root / "node-b" / "broker").start()
        self.b.add_users()
        self.a, self.c = self._join("node-a"), self._join("node-c")
        folders, keys = _make_keys(root / "agents", n)
        tokens = [self.b.token(uses=n, ttl="2h")]
        log(f"nodes: enrolling {n} agents on node B")
        replies = asyncio.run(_enrol_all(self.b, tokens, keys, [f"pc-{i}" for i in range(n)]))
        ca_pem = (self.b.data / "ca.pem").read_text()
        host, _, port = replies[0]["tunnel"].rpartition(":")
        self.shared = {
            "broker_url": self.b.url,
            "ca_pem": ca_pem,
            "ca_fingerprint": ca_fingerprint(ca_pem.encode()),
            "tunnel_host": host.strip("[]"),
            "tunnel_port": int(port),
            "broker_tunnel_key": replies[0]["tunnel_key"],
            "organisation": "",
        }
        self.agents = [(r["agent_id"], folders[i]) for i, r in enumerate(replies)]
        self.workers: list[tuple[Any, Path]] = []

    def _join(self, name: str) -> Broker:
        data = self.root / name / "broker"
        data.mkdir(parents=True, mode=0o700)
        for item in PKI:
            shutil.copy2(self.b.data / item, data / item)
        return Broker(self.procs, data).start()

    def start_workers(self, order: str) -> None:
        count = max(1, math.ceil(self.n / PER_WORKER))
        for w in range(count):
            chunk = range(w * PER_WORKER, min(self.n, (w + 1) * PER_WORKER))
            spec = self.root / f"worker{w}.json"
            agents = [[self.agents[i][0], str(self.agents[i][1]), source_address(i)] for i in chunk]
            spec.write_text(
                json.dumps({"config": self.shared, "ramp": 16, "agents": agents, "order": order})
            )
            report = self.root / f"worker{w}.report.json"
            report.unlink(missing_ok=True)
            proc = self.procs.start(
                [PY, "-m", "bench.fleet_worker", str(spec), str(report)],
                log_path=self.root / f"worker{w}.log",
            )
            self.workers.append((proc, report))

    def stop_workers(self) -> None:
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            self.procs.stop(proc, timeout=45)
        self.workers = []

    def learned(self) -> bool:
        """Every agent keeps the three nodes' tunnel addresses (``nodes.json``)."""
        for _, folder in self.agents:
            try:
                known = json.loads((folder / "nodes.json").read_text())
            except (OSError, ValueError):
                return False
            if len(known.get("tunnels", [])) != 3:
                return False
        return True

    def close(self) -> None:
        self.stop_workers()
        for node in (self.a, self.b, self.c):
            node.stop()
        self.pg.stop("immediate")
        shutil.rmtree(self._pg_root, ignore_errors=True)
        if self._env is None:
            os.environ.pop(STORE_ENV, None)
        else:
            os.environ[STORE_ENV] = self._env


def one_round(cluster: Cluster, order: str, timeout: float) -> dict[str, Any]:
    if cluster.b.proc is None or cluster.b.proc.poll() is not None:
        cluster.b.start(timeout=120)
    desks = {name: Desk.login(node, ADMIN, ADMIN_PW, timeout=60) for name, node in
             (("A", cluster.a), ("B", cluster.b), ("C", cluster.c))}  # fmt: skip
    try:
        cluster.start_workers(order)
        n = cluster.n
        filled = _wait("the fill on B", lambda: len(_online(desks["B"])) >= n, max(120.0, n / 5))
        _wait("the agents to learn the nodes", cluster.learned, 60)
        t_kill = time.time()
        cluster.b.kill9()
        counts: dict[str, int] = {}

        def all_back() -> bool:
            counts.update(A=len(_online(desks["A"])), C=len(_online(desks["C"])))
            return counts["A"] + counts["C"] >= n

        back = _wait("the agents back on A and C", all_back, timeout, step=0.5)
        reports = _workers_report(cluster.workers)
        own = [
            min(t for t in v if t > t_kill) - t_kill
            for r in reports
            for v in r["attaches"].values()
            if any(t > t_kill for t in v)
        ]
    finally:
        cluster.stop_workers()
        for desk in desks.values():
            desk.close()
    return {
        "order": order,
        "fill_s": filled,
        "all_back_s": back,
        "on_a": counts.get("A", 0),
        "on_c": counts.get("C", 0),
        "largest_share": max(counts.values(), default=0) / n,
        "reconnect_s": {q: percentile(own, q) for q in (50, 90, 99)} if own else {},
        "back": len(own),
    }


def run(procs: Procs, root: Path, *, quick: bool, sizes: list[int]) -> dict[str, Any]:
    n = sizes[0] if sizes else (100 if quick else 300)
    rounds = 2 if quick else 3
    cluster = Cluster(procs, root, n)
    results: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            orders = ORDERS if r % 2 == 0 else tuple(reversed(ORDERS))  # interleaved
            for order in orders:
                log(f"nodes: round {r + 1}/{rounds}, order {order}, {n} agents")
                results.append(one_round(cluster, order, timeout=180))
                log(f"nodes: {results[-1]}")
    finally:
        cluster.close()
    summary: dict[str, Any] = {}
    for order in ORDERS:
        mine = [x for x in results if x["order"] == order]
        backs = [x["all_back_s"] for x in mine if x["all_back_s"] is not None]
        summary[order] = {
            "rounds": len(mine),
            "all_back_s_median": percentile(backs, 50) if backs else None,
            "largest_share_median": percentile([x["largest_share"] for x in mine], 50),
            "reconnect_p90_median": percentile(
                [x["reconnect_s"].get(90, 0.0) for x in mine if x["reconnect_s"]], 50
            )
            if any(x["reconnect_s"] for x in mine)
            else None,
        }
    return {"agents": n, "rounds": results, "summary": summary}
