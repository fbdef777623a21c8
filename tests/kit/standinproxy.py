"""A web proxy stand-in on 127.0.0.1 whose behaviour a test switches while it runs.

One asyncio server on its own thread. Each new connection gets what ``mode``
says at that moment: ``refuse`` answers ``502 Bad Gateway`` to the CONNECT,
``garbage`` answers bytes that are no HTTP, ``hangup`` closes without a word,
``stall`` reads the CONNECT and never answers (until ``stop()``),
``forward`` is a working CONNECT proxy (200, then bytes both ways). ``down()``
closes the listening socket (connections are refused) and ``up()`` opens it
again on the same port. Every CONNECT line it read is kept in ``asked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Literal

Mode = Literal["refuse", "garbage", "hangup", "stall", "forward"]
MAX_HEAD = 16 * 1024


class StandInProxy:
    def __init__(self, mode: Mode = "refuse") -> None:
        self.mode: Mode = mode
        self.asked: list[str] = []
        self.authorizations: list[str] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, user: str = "", password: str = "") -> str:
        who = f"{user}:{password}@" if user else ""
        return f"http://{who}127.0.0.1:{self.port}"

    def start(self) -> StandInProxy:
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        self._call(self._listen())

    def down(self) -> None:
        self._call(self._close())

    def stop(self) -> None:
        self.down()
        self._call(self._cancel_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: object) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "hangup":
            return
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.asked.append(lines[0])
        self.authorizations += [
            line.partition(":")[2].strip()
            for line in lines
            if line.lower().startswith("proxy-authorization:")
        ]
        if mode == "refuse":
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        if mode == "garbage":
            writer.write(b"\x16\x03\x01 this is no proxy \xff\xfe\r\n\r\n")
            await writer.drain()
            return
        if mode == "stall":
            await asyncio.Event().wait()  # cancelled by stop()
        target = lines[0].split(" ")[1]
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


@contextmanager
def stand_in_proxy(mode: Mode = "refuse") -> Iterator[StandInProxy]:
    proxy = StandInProxy(mode).start()
    try:
        yield proxy
    finally:
        proxy.stop()
