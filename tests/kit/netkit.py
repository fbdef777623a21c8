"""Network plumbing for tunnel tests: a proxy whose connections can be cut."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def tcp_ports(pid: int, *, listening: bool = False) -> set[int]:
    """Process ``pid``'s TCP sockets, from /proc (no ss needed): the remote ports of
    its established connections, or (``listening``) the ports it listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    state, column = ("0A", 1) if listening else ("01", 2)  # LISTEN / ESTABLISHED
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and fields[9] in inodes:
                ports.add(int(fields[column].rpartition(":")[2], 16))
    return ports


def port_of(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


class CuttableProxy:
    """TCP proxy on 127.0.0.1 that a test can cut (close everything) and restore,
    or black-hole (keep the connections open, forward nothing: a dead peer)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.black_hole = False
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.black_hole:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def restore(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

        self._call(start())

    def cut(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            self._writers.clear()

        self._call(stop())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def dial_only(proxy: CuttableProxy, agent_config: Path) -> None:
    """The agent (its config folder) reaches the broker through ``proxy`` and no
    other way: its tunnel dials the proxy, and its fallback to the HTTPS port is
    off. With that fallback, an attempt that meets the proxy between a cut and
    its restore comes back over the HTTPS port, around the proxy, and stays there."""
    config_file = agent_config / "agent.json"
    config = json.loads(config_file.read_text())
    config["tunnel_host"], config["tunnel_port"] = "127.0.0.1", proxy.port
    config["tunnel_url"] = ""
    config_file.write_text(json.dumps(config))
