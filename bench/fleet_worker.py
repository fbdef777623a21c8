"""One bench process that plays many PCs: real ``AgentTunnel`` + ``AgentService`` per agent.

    python -m bench.fleet_worker SPEC.json REPORT.json

SPEC holds the shared part of the agent configuration (broker URL, pinned CA
and tunnel key, tunnel address) and a list of ``[agent_id, folder, source]``
(``source``: the 127.x.y.z address this PC dials from); each
folder holds that agent's enrolled Ed25519 host key (``host_key``). Every agent
runs the product's own reconnect loop (``AgentTunnel.run_forever``, full-jitter
backoff, default 30 s cap), its own route choice (``connect_once``: the raw SSH
port, or SSH inside a WebSocket on the HTTPS port when the shared configuration
has ``tunnel_port: 0`` and a ``tunnel_url``) and its own SSH server
(``AgentSSHServer``, the consent gate, the control channel): only the process
is shared.

The start is ramped (``ramp`` handshakes in flight per process) so the first
fill measures the broker's handshake rate rather than a connect storm; after a
broker restart the agents reconnect on their own, exactly as the product does.

Every time the broker opens an agent's control channel (the agent is fully
back) the wall-clock time is noted; SIGUSR1 writes REPORT, SIGTERM stops all
tunnels, writes REPORT and exits.

``"order": "listed"`` in SPEC makes every agent try the other broker nodes in the
order the node gave (the baseline of ``bench/nodes.py``), instead of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from allowhelp.agent import peers, proxy
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.service import AgentService, Sender
from allowhelp.agent.tunnel import AgentTunnel
from bench.common import proc_stat
from bench.nofile import raise_nofile

# Each simulated PC dials from its own loopback address (127.a.b.c), as each PC
# has its own address: the broker limits handshakes per source address (a branch
# office's NAT), which a whole bench fleet sharing 127.0.0.1 would hit instead.
# The product opens both routes' TCP connections through ``proxy._tcp``; this
# one binds the calling agent's address first (a context variable: each agent's
# task has its own), and is otherwise the same.
SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("SOURCE", default="127.0.0.1")


async def _tcp_from_source(host: str, port: int, what: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((SOURCE.get(), 0))
        async with asyncio.timeout(proxy.CONNECT_TIMEOUT):
            await loop.sock_connect(sock, (host, port))
    except TimeoutError:
        sock.close()
        raise OSError(f"connecting to {what} timed out") from None
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


proxy._tcp = _tcp_from_source


class CountingService(AgentService):
    """The real service; it only notes when the broker opens the control channel."""

    def __init__(self, config: AgentConfig, seen: list[float], first: asyncio.Event) -> None:
        super().__init__(config)
        self._seen = seen
        self._first = first

    def attach(self, send: Sender) -> None:
        self._seen.append(time.time())
        self._first.set()
        super().attach(send)


def _listed(addresses: tuple[str, ...], agent_id: str) -> tuple[str, ...]:
    return addresses


async def main(spec: dict[str, Any], report_path: Path) -> None:
    raise_nofile()
    if spec.get("order") == "listed":  # bench/nodes.py's baseline: the nodes' own order
        peers.spread = _listed
    shared = spec["config"]
    ramp = asyncio.Semaphore(int(spec.get("ramp", 16)))
    stop = asyncio.Event()
    attaches: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    tunnels: list[AgentTunnel] = []
    loop = asyncio.get_running_loop()

    def report() -> None:
        for tunnel in tunnels:
            if tunnel.state.last_error:
                errors[tunnel._config.agent_id] = tunnel.state.last_error
        st = proc_stat_self()
        data = {"attaches": attaches, "errors": errors, "rss_kib": st[0], "cpu_s": st[1]}
        tmp = report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(report_path)

    loop.add_signal_handler(signal.SIGUSR1, report)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def one(agent_id: str, folder: str, source: str) -> None:
        config = AgentConfig(**shared, agent_id=agent_id)
        seen = attaches.setdefault(agent_id, [])
        first = asyncio.Event()
        service = CountingService(config, seen, first)
        tunnel = AgentTunnel(service, Path(folder))
        tunnels.append(tunnel)
        async with ramp:
            SOURCE.set(source)  # copied into the runner task's context
            runner = asyncio.create_task(tunnel.run_forever(stop))
            waiter = asyncio.create_task(first.wait())
            await asyncio.wait({runner, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        await runner

    jobs = [
        asyncio.create_task(one(agent_id, folder, source))
        for agent_id, folder, source in spec["agents"]
    ]
    await stop.wait()
    await asyncio.wait(jobs, timeout=30)
    report()


def proc_stat_self() -> tuple[int, float]:
    st = proc_stat(os.getpid())
    return st.rss_kib, st.cpu_s


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.ERROR)
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])))
