"""The store as the broker's event loop uses it: off the loop, on threads of its own.

A locked or slow ``broker.sqlite3`` (a backup holding it, a disk stalling)
must stall only the calls that need the database, never the relays,
keepalives and requests that don't: before, a 15 s lock froze terminal echo
and SSH keepalives with it. So the broker process opens its store on
dedicated threads, each owning its own connection, and ``run``/``read`` hand
a ``Store`` method and its arguments to one of them and await the answer.

Two lanes:

* ``run``: the writer. Every call that may write goes here, one at a time,
  in the order the calls were made (the audit log's writer thread does the
  same for ``audit.sqlite3``). While another process holds the write lock, a
  write waits out the busy timeout and then fails with ``StoreError``.
* ``read``: a second connection opened ``query_only``, for plain queries
  (who owns this cookie, the agent list). In WAL mode a reader is not blocked
  by a writer, so lookups go on answering while a write waits behind a lock,
  instead of queueing behind it. A write sent here fails (``StoreError``), so
  a wrong lane shows up in the tests rather than as a silent reorder.

Command-line tools (``user add``, ``token create``) use ``Store`` directly:
they have no event loop to protect.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.core import StorePlace

P = ParamSpec("P")
T = TypeVar("T")


class _Lane:
    """One thread and the one connection it owns."""

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.store: Store | None = None

    async def call(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func)

    async def close(self) -> None:
        store, self.store = self.store, None
        try:
            if store is not None:
                await self.call(store.close)
        finally:
            self.executor.shutdown(wait=False)


class StoreWorker:
    """The broker process's store: a writer thread and a reader thread."""

    def __init__(self, path: StorePlace, node_id: str = "") -> None:
        self.path = path
        self.node_id = node_id
        self._writer = _Lane("store-write")
        self._reader = _Lane("store-read")

    @classmethod
    async def open(cls, path: StorePlace, node_id: str = "") -> StoreWorker:
        """Open (and migrate) the database on the writer, then the reader's connection;
        ``node_id``: this serving broker's, written with its sessions and agents."""
        worker = cls(path, node_id)
        try:
            worker._writer.store = await worker._writer.call(functools.partial(Store.open, path))
            reader = functools.partial(Store.open, path, read_only=True)
            worker._reader.store = await worker._reader.call(reader)
            worker._writer.store.node_id = worker._reader.store.node_id = node_id
        except BaseException:
            await worker.close()
            raise
        return worker

    async def run(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``method(store, *args, **kwargs)`` on the writer's thread, in call order;
        its answer, or its error."""
        return await self._on(self._writer, method, *args, **kwargs)

    async def read(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``method(store, *args, **kwargs)`` on the reader's thread (queries only):
        not held up by a write waiting for the database's lock."""
        return await self._on(self._reader, method, *args, **kwargs)

    @staticmethod
    async def _on(
        lane: _Lane,
        method: Callable[Concatenate[Store, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        store = lane.store
        if store is None:
            raise StoreError("the broker database is closed")
        return await lane.call(functools.partial(method, store, *args, **kwargs))

    async def close(self) -> None:
        """Close both connections, each on its own thread (after what is queued there)."""
        try:
            await self._reader.close()
        finally:
            await self._writer.close()
