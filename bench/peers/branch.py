"""An emulated branch link for the technician's side: rate by ``tc tbf``, delay by a proxy.

netem is not available here, so the link is built from two parts:

* **rate**: a network namespace of the bench's own (``ah-bench-<pid>``) joined to
  the root namespace by a veth pair with private addresses in 10.231.0.0/16
  (a /30 of its own, nothing routed beyond it), ``tbf`` as the root qdisc of
  *both* veth ends (each end shapes what it sends: one is the download, the
  other the upload). Nothing touches ``lo`` or a real interface.
* **delay**: :func:`serve` (``python -m bench.peers.branch``), a small asyncio TCP
  proxy. Its entrance listens on 127.0.0.1 (where the viewer connects) and holds
  each chunk ``delay`` seconds in each direction (a pipelined delay line: bounded
  queues, the link stays full); its outgoing socket is made inside the namespace
  (``setns`` on that one thread for the ``socket()`` call), so the bytes cross
  the shaped veth to the proxy's exit on the root side's veth address, which
  forwards them to the product's real port on 127.0.0.1.

The PC's side (agents) stays on the LAN: the technician is at the branch.
Everything is torn down in ``finally``: the proxy process, then the namespace
(deleting it deletes the veth pair and both qdiscs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import PY, Procs, free_port, log, wait_for

RATE, BURST, QUEUE_LATENCY = "10mbit", "32kbit", "50ms"
DELAY_S = 0.020
LINK = "10 Mbit/s tbf each way (burst 32 kbit, queue 50 ms), 20 ms each way by a proxy"
CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # at most 4 MiB held per direction per connection
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Addresses:
    namespace: str
    host_dev: str  # the root namespace's end
    ns_dev: str
    host_ip: str
    ns_ip: str

    @classmethod
    def for_pid(cls, pid: int) -> Addresses:
        third, fourth = (pid // 64) % 256, (pid % 64) * 4
        prefix = f"10.231.{third}."
        return cls(
            f"ah-bench-{pid}",
            f"ahb{pid}h",
            f"ahb{pid}n",
            f"{prefix}{fourth + 1}",
            f"{prefix}{fourth + 2}",
        )


def _netns_exec(name: str, *args: str) -> None:
    _ip("netns", "exec", name, *args)


def _build(a: Addresses) -> None:
    in_use = subprocess.run(
        ["ip", "-o", "addr", "show", "to", f"{a.host_ip}/30"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if in_use.stdout.strip():
        raise RuntimeError(f"{a.host_ip}/30 is in use on this machine: {in_use.stdout.strip()}")
    _ip("netns", "add", a.namespace)
    _ip("link", "add", a.host_dev, "type", "veth", "peer", "name", a.ns_dev)
    _ip("link", "set", a.ns_dev, "netns", a.namespace)
    _ip("addr", "add", f"{a.host_ip}/30", "dev", a.host_dev)
    _ip("link", "set", a.host_dev, "up")
    _netns_exec(a.namespace, "ip", "addr", "add", f"{a.ns_ip}/30", "dev", a.ns_dev)
    _netns_exec(a.namespace, "ip", "link", "set", a.ns_dev, "up")
    _netns_exec(a.namespace, "ip", "link", "set", "lo", "up")
    shape = ("root", "tbf", "rate", RATE, "burst", BURST, "latency", QUEUE_LATENCY)
    _tc("qdisc", "add", "dev", a.host_dev, *shape)
    _netns_exec(a.namespace, "tc", "qdisc", "add", "dev", a.ns_dev, *shape)


def _tear_down(a: Addresses) -> None:
    """The namespace goes, and with it the veth pair and both qdiscs; the root end
    is deleted by name in case the pair was made but not moved yet."""
    with contextlib.suppress(RuntimeError):
        _ip("netns", "del", a.namespace)
    for _ in range(50):  # the kernel frees the pair shortly after the namespace
        if not Path(f"/sys/class/net/{a.host_dev}").exists():
            return
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", a.host_dev)
        time.sleep(0.1)
    log(f"branch: {a.host_dev} still exists after teardown")


@contextmanager
def branch_link(procs: Procs, root: Path, targets: dict[str, int]) -> Iterator[dict[str, int]]:
    """The link up, a proxy per target port; yields {name: proxy port on 127.0.0.1}."""
    addresses = Addresses.for_pid(os.getpid())
    started: list[subprocess.Popen[bytes]] = []
    try:
        _build(addresses)
        ports: dict[str, int] = {}
        for name, target in targets.items():
            port = free_port()
            ready = root / f"branch-{name}.ready"
            ready.unlink(missing_ok=True)
            started.append(
                procs.start(
                    [
                        *(PY, "-m", "bench.peers.branch", "--netns", addresses.namespace),
                        *("--port", str(port), "--hop", addresses.host_ip),
                        *("--target", str(target), "--delay", str(DELAY_S)),
                        *("--ready", str(ready)),
                    ],
                    log_path=root / f"branch-{name}.log",
                )
            )
            proc = started[-1]

            def up(ready: Path = ready, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"the branch proxy exited with {proc.returncode}")
                return ready.exists()

            wait_for(up, 20, f"the branch proxy for {name}")
            ports[name] = port
        log(f"branch: link up ({LINK}), proxies {ports}")
        yield ports
    finally:
        for proc in started:
            procs.stop(proc)
        _tear_down(addresses)


# --- the proxy process ---------------------------------------------------------------


def _socket_in(namespace_fd: int, root_fd: int) -> socket.socket:
    """A TCP socket created in the namespace (a socket keeps the namespace it was made in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(namespace_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns into the bench namespace failed")
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        if libc.setns(root_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the root namespace failed")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk written ``delay`` s after it was read."""
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def take() -> None:
        while chunk := await reader.read(CHUNK):
            await line.put((time.monotonic() + delay, chunk))
        await line.put((time.monotonic() + delay, b""))

    async def give() -> None:
        while True:
            due, chunk = await line.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    taking = asyncio.ensure_future(take())
    try:
        await give()
    finally:
        taking.cancel()


async def _join(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    delay: float,
) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1], delay), _pipe(b[0], a[1], delay))
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for writer in (a[1], b[1]):
            writer.close()


async def serve(
    namespace: str, port: int, hop: str, target: int, delay: float, ready: Path
) -> None:
    namespace_fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    root_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    loop = asyncio.get_running_loop()

    async def entrance(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            sock = _socket_in(namespace_fd, root_fd)
        except OSError:
            w.close()
            return
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (hop, port))
        except OSError:
            sock.close()
            w.close()
            return
        await _join((r, w), await asyncio.open_connection(sock=sock), delay)

    async def exit_(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            far = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            w.close()
            return
        await _join((r, w), far, 0.0)

    outer = await asyncio.start_server(entrance, "127.0.0.1", port)
    inner = await asyncio.start_server(exit_, hop, port)
    await asyncio.to_thread(ready.write_text, "up\n")
    async with outer, inner:
        await asyncio.gather(outer.serve_forever(), inner.serve_forever())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.branch")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hop", required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--delay", type=float, default=DELAY_S)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.netns, args.port, args.hop, args.target, args.delay, args.ready))


if __name__ == "__main__":
    main()
