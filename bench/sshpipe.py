"""The SSH tunnel alone: asyncssh with the product's algorithms, no PTY, no WebSocket.

The full path is capped by the PTY (a line discipline with a 4 KiB read
buffer), which hides what the tunnel itself costs and what the known levers
(cipher, packet size, malloc tunables, uvloop) buy. This measures the tunnel's
own bulk rate the way the product sets it up: the agent side dials
(``connect_reverse``) and is the SSH server, the broker side listens
(``listen_reverse``) and is the client, with ``allowhelp.certs.ssh_options``'
algorithms. The two ends are separate processes, like broker and agent.

    python -m bench.sshpipe agent HOST PORT [--uvloop] [--pktsize N]   # the dialling side
"""

# ruff: noqa: PLC0415 - uvloop is imported only when asked for

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh

from allowhelp.certs import ssh_options
from bench.common import PY, Procs, log, median

MIB = 1024 * 1024
BLOCK = 256 * 1024
DEFAULT_PKT = 32768


def _algs(cipher: str | None) -> dict[str, Any]:
    return {
        "encryption_algs": [cipher] if cipher else list(ssh_options.ENCRYPTION_ALGS),
        "kex_algs": list(ssh_options.KEX_ALGS),
        "mac_algs": list(ssh_options.MAC_ALGS),
        "compression_algs": list(ssh_options.COMPRESSION_ALGS),
    }


async def _agent_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    op, size_text = str(process.command).split()
    size = int(size_text)
    if op == "up":
        left = size
        while left > 0:
            data = await process.stdin.read(BLOCK)
            if not data:
                break
            left -= len(data)
    else:
        block = b"a" * BLOCK
        left = size
        while left > 0:
            n = min(left, BLOCK)
            process.stdout.write(block if n == BLOCK else block[:n])
            await process.stdout.drain()
            left -= n
    process.exit(0)


class _Open(asyncssh.SSHServer):
    """The bench's own server: no login needed (this measures the data path only)."""

    def begin_auth(self, username: str) -> bool:
        return False


async def _agent(host: str, port: int, pktsize: int, key_path: Path) -> None:
    key = asyncssh.read_private_key(key_path)
    conn = await asyncssh.connect_reverse(
        host,
        port,
        config=None,
        server_host_keys=[key],
        server_factory=_Open,
        process_factory=_agent_process,
        encoding=None,
        max_pktsize=pktsize,
        window=max(2 * MIB, 8 * pktsize),
        **_algs(None),
    )
    await conn.wait_closed()


class _Broker(asyncssh.SSHClient):
    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        return True


async def _measure(
    procs: Procs, root: Path, variant: dict[str, Any], size: int, runs: int
) -> dict[str, list[float]]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = root / f"host_key_{variant['name'].replace(' ', '_').replace('/', '_')}"
    key_path.write_bytes(host_key.export_private_key("openssh"))
    pktsize = int(variant.get("pktsize", DEFAULT_PKT))
    got: asyncio.Future[asyncssh.SSHClientConnection] = asyncio.get_running_loop().create_future()

    def accepted(conn: asyncssh.SSHClientConnection) -> None:
        if not got.done():
            got.set_result(conn)

    acceptor = await asyncssh.listen_reverse(
        "127.0.0.1",
        0,
        client_factory=_Broker,
        acceptor=accepted,
        config=None,
        username="bench",
        client_keys=[client_key],
        known_hosts=None,
        **_algs(variant.get("cipher")),
    )
    port = acceptor.get_port()
    argv = [PY, "-m", "bench.sshpipe", "agent", "127.0.0.1", str(port), str(key_path)]
    argv += ["--pktsize", str(pktsize)] + (["--uvloop"] if variant.get("uvloop") else [])
    env = {"GLIBC_TUNABLES": variant["tunables"]} if variant.get("tunables") else None
    agent = procs.start(argv, env=env, log_path=root / "sshpipe-agent.log")
    out: dict[str, list[float]] = {"up": [], "down": []}
    try:
        conn = await asyncio.wait_for(got, 30)
        window = max(2 * MIB, 8 * pktsize)
        for _ in range(runs + 1):  # the first round is a warm-up
            for direction in ("down", "up"):
                proc = await conn.create_process(
                    f"{direction} {size}", encoding=None, max_pktsize=pktsize, window=window
                )
                t0 = time.perf_counter()
                if direction == "down":
                    left = size
                    while left > 0:
                        data = await proc.stdout.read(BLOCK)
                        if not data:
                            raise ConnectionError("short download")
                        left -= len(data)
                else:
                    block = b"x" * BLOCK
                    for _ in range(size // BLOCK):
                        proc.stdin.write(block)
                        await proc.stdin.drain()
                    proc.stdin.write_eof()
                await proc.wait()
                out[direction].append(size / (time.perf_counter() - t0) / 1e6)
        for d in out:
            out[d] = out[d][1:]
        conn.close()
    finally:
        acceptor.close()
        procs.stop(agent)
    return out


VARIANTS: list[dict[str, Any]] = [
    {"name": "aes128-gcm, 32 KiB packets, asyncio (the product before 6195ade)"},
    {"name": "chacha20-poly1305 instead", "cipher": "chacha20-poly1305@openssh.com"},
    {"name": "128 KiB packets", "pktsize": 131072},
    {
        "name": "128 KiB packets + malloc thresholds (the product since 6195ade)",
        "pktsize": 131072,
        "tunables": "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=4194304",
    },
    {"name": "uvloop (both ends)", "uvloop": True},
]


def run(procs: Procs, root: Path, *, quick: bool) -> dict[str, Any]:
    """Round-robin over the variants (fresh processes each round), so a noisy minute on a
    shared VM hits every variant alike instead of one."""
    root.mkdir(parents=True, exist_ok=True)
    size = (32 if quick else 128) * MIB
    rounds = 3 if quick else 7
    result: dict[str, Any] = {"bytes": size, "rounds": rounds, "variants": {}}
    samples: dict[str, dict[str, list[float]]] = {
        v["name"]: {"up": [], "down": []} for v in VARIANTS
    }
    for r in range(rounds):
        for variant in VARIANTS:
            factory = None
            if variant.get("uvloop"):
                import uvloop

                factory = uvloop.new_event_loop
            with asyncio.Runner(loop_factory=factory) as runner:
                got = runner.run(_measure(procs, root, variant, size, 1))
            for d in ("up", "down"):
                samples[variant["name"]][d] += got[d]
        log(f"tunnel round {r + 1}/{rounds} done")
    for name, by_dir in samples.items():
        result["variants"][name] = {
            "samples_mb_s": by_dir,
            "median_mb_s": {d: median(v) for d, v in by_dir.items()},
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sshpipe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    agent = sub.add_parser("agent")
    agent.add_argument("host")
    agent.add_argument("port", type=int)
    agent.add_argument("key", type=Path)
    agent.add_argument("--pktsize", type=int, default=DEFAULT_PKT)
    agent.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(_agent(args.host, args.port, args.pktsize, args.key))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
