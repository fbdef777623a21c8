"""The tunnel's SSH handshake alone: the broker's CPU per handshake, and where it goes.

    python -m bench.fleet_handshake [--handshakes 600] [--parallel 16] [--profile] [--json FILE]

The fleet storm (``bench/fleet.py``) measures a whole broker: the handshake
plus the audit record, the history row, the inventory, the console feed and
the bench's own API polls. This isolates the handshake: this process plays
the broker with the product's own tunnel code (``listener.client_options``
and ``AgentConnection``: the same algorithm lists, the same callbacks; the
key check is a set lookup as ``tunnel/keys.py``'s), and one child process
plays the agents with the product's own ``AgentTunnel.connect_once`` (its
options, its SSH server), ``--parallel`` at a time, each connection closed
by the broker once it is authenticated, as a refused duplicate would be.
Both on 127.0.0.1.

Reported: the broker process's CPU (utime+stime from /proc: all threads) per
handshake over the whole run, the agents' process likewise, and the wall
rate. ``--profile``: cProfile of the broker side (not a timed run), with
the share of the key exchange's and authentication's public-key crypto
(X25519, Ed25519 sign and verify), the packet ciphers, and asyncssh's Python.
Run it from each tree (``git archive``) for an A/B: the lists and callbacks
are whatever that tree's code has.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh

from allowhelp.broker.tunnel.listener import AgentConnection
from allowhelp.broker.tunnel.sshclient import client_options
from allowhelp.certs.sshkeys import agent_id_for, public_key_line
from bench.common import PY, Procs, proc_stat

KEY_FILE = "host_key"


class _KeyCheck:
    """What ``AgentConnection`` asks of its listener, without the store and audit."""

    def __init__(self, enrolled: set[str]) -> None:
        self.enrolled = enrolled
        self.accepted = 0

    def accept_key(self, key: asyncssh.SSHKey, addr: str, peer: str) -> bool:
        return public_key_line(key) in self.enrolled

    def share_sig_algs(self, conn: asyncssh.SSHClientConnection) -> None:
        return None


async def _broker(count: int, parallel: int, folder: Path, procs: Procs) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    agent_key = asyncssh.generate_private_key("ssh-ed25519")
    (folder / KEY_FILE).write_bytes(agent_key.export_private_key("openssh"))
    check = _KeyCheck({public_key_line(agent_key)})
    options = client_options(broker_key, lambda: AgentConnection(check))  # type: ignore[arg-type]
    done = 0
    failed: list[str] = []
    all_done = loop.create_future()

    def finished(conn: Any, exc: Exception | None = None) -> None:
        nonlocal done
        done += 1
        if exc is not None:
            failed.append(str(exc))
        else:
            conn.close()
        if done >= count and not all_done.done():
            all_done.set_result(None)

    server = await loop.create_server(
        lambda: asyncssh.SSHClientConnection(loop, options, finished, finished),
        "127.0.0.1",
        0,
        backlog=1024,
    )
    port = server.sockets[0].getsockname()[1]
    spec = {
        "port": port,
        "count": count,
        "parallel": parallel,
        "folder": str(folder),
        "broker_key": broker_key.export_public_key("openssh").decode(),
        "agent_id": agent_id_for(agent_key),
    }
    me = proc_stat_self()
    t0 = time.perf_counter()
    child = procs.start([PY, "-m", "bench.fleet_handshake", "--agents", json.dumps(spec)])
    c0 = proc_stat(child.pid).cpu_s
    await asyncio.wait_for(all_done, timeout=max(120.0, count / 5))
    wall = time.perf_counter() - t0
    me1 = proc_stat_self()
    c1 = proc_stat(child.pid).cpu_s
    server.close()
    procs.stop(child, timeout=10)
    return {
        "handshakes": count,
        "failed": len(failed),
        "first_failure": failed[0] if failed else "",
        "parallel": parallel,
        "handshakes_per_s": count / wall,
        "broker_cpu_ms_per_handshake": (me1 - me) / count * 1000,
        "agents_cpu_ms_per_handshake": (c1 - c0) / count * 1000,
    }


def proc_stat_self() -> float:
    import os  # noqa: PLC0415

    return proc_stat(os.getpid()).cpu_s


async def _agents(spec: dict[str, Any]) -> None:
    from allowhelp.agent.config import AgentConfig  # noqa: PLC0415
    from allowhelp.agent.service import AgentService  # noqa: PLC0415
    from allowhelp.agent.tunnel import AgentTunnel  # noqa: PLC0415

    config = AgentConfig(
        broker_url="https://127.0.0.1:1",
        ca_pem="",
        ca_fingerprint="",
        tunnel_host="127.0.0.1",
        tunnel_port=int(spec["port"]),
        broker_tunnel_key=spec["broker_key"],
        agent_id=spec["agent_id"],
        organisation="bench",
    )
    tunnel = AgentTunnel(AgentService(config), Path(spec["folder"]))
    left = int(spec["count"])
    slots = asyncio.Semaphore(int(spec["parallel"]))

    async def one() -> None:
        async with slots:
            try:
                conn = await tunnel.connect_once()
            except (OSError, asyncssh.Error) as exc:
                print(f"handshake failed: {exc}", file=sys.stderr)
                return
            await conn.wait_closed()

    await asyncio.gather(*(one() for _ in range(left)))


PROFILE_GROUPS = (  # (group, substring of the file path or of the function's name)
    ("public-key crypto (X25519, Ed25519)", ("ed25519", "x25519", "asyncssh/crypto/ed.py")),
    ("packet ciphers (AES-GCM)", ("AESGCM", "asyncssh/crypto/cipher.py")),
    ("socket sends and receives", ("'send' of", "'recv' of", "_accept' of")),
    ("asyncssh Python (packets, negotiation, auth)", ("asyncssh/",)),
)


def _profile_split(stats: pstats.Stats) -> dict[str, float]:
    """Shares of the broker's busy time (epoll waits left out), own time summed by
    where each function lives."""
    shares: dict[str, float] = {name: 0.0 for name, _ in PROFILE_GROUPS}
    rest = "event loop, hashing and the rest"
    shares[rest] = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, _line, func), (_cc, _nc, own, _cum, _callers) in raw.items():
        where = f"{path} {func}"
        if "epoll" in where:
            continue
        group = next((g for g, needles in PROFILE_GROUPS if any(n in where for n in needles)), rest)
        shares[group] += own
    total = sum(shares.values())
    return {k: round(v * 100 / total, 1) for k, v in shares.items()} if total else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_handshake", description=__doc__)
    parser.add_argument("--handshakes", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--agents", help=argparse.SUPPRESS)  # the child's spec
    args = parser.parse_args(argv)
    if args.agents:
        asyncio.run(_agents(json.loads(args.agents)))
        return 0
    if args.handshakes < 1 or args.parallel < 1:
        parser.error("--handshakes and --parallel must be at least 1")
    procs = Procs()
    profiler = cProfile.Profile() if args.profile else None
    try:
        with tempfile.TemporaryDirectory(prefix="ah-handshake-") as folder:
            if profiler is not None:
                profiler.enable()
            result = asyncio.run(_broker(args.handshakes, args.parallel, Path(folder), procs))
            if profiler is not None:
                profiler.disable()
    finally:
        procs.close()
    if profiler is not None:
        stats = pstats.Stats(profiler)
        result["profile_percent"] = _profile_split(stats)
        stats.sort_stats("tottime").print_stats(25)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if not result["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
