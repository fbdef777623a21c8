"""The tunnel's small store writes, handed to the writer thread together.

Every agent that connects costs the store a connectivity-history row and,
once it says hello, an inventory update. One at a time that is one executor
hand-over, one future and one thread wake-up each: after a broker restart,
10,000 agents back in a minute make 20,000 of them, on the event loop the
handshakes need (``bench.fleet --profile-restart``, docs/benchmarks.md §10).

Here each write is queued and a single flusher hands everything queued so
far to the writer thread as one call, which runs the writes one by one, in
the order they were queued, each in its own transaction as before: what one
write did or failed is still that write's own answer to its caller. No
timer: while one batch is on the thread the next one gathers, so a lone
write waits for nothing but the loop's next turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

MAX_BATCH = 500  # writes per hand-over, so one batch holds the writer thread only briefly

Write = Callable[..., None]
_Queued = tuple[Write, tuple[Any, ...], "asyncio.Future[None]"]


def _run_all(store: Store, writes: list[tuple[Write, tuple[Any, ...]]]) -> list[Exception | None]:
    """On the writer thread: each write in order; each one's error, or None. One
    write's failure, whatever it is, is its own: the next ones still run."""
    said: list[Exception | None] = []
    for write, args in writes:
        try:
            write(store, *args)
        except Exception as exc:  # handed back to that write's caller, as db.run would
            said.append(exc)
        else:
            said.append(None)
    return said


class StoreBatch:
    """Writes whose only answer is done or failed, batched onto the writer thread."""

    def __init__(self, db: StoreWorker) -> None:
        self._db = db
        self._queued: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, write: Write, *args: Any) -> None:
        """``write(store, *args)`` on the writer thread; its error raised here."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((write, args, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                said: list[Exception | None]
                try:
                    said = await self._db.run(_run_all, [(w, a) for w, a, _ in batch])
                except Exception as exc:  # the store is closed: every write of the batch failed
                    said = [exc] * len(batch)
                except asyncio.CancelledError:  # shutting down: nobody waits forever
                    for _, _, done in batch + self._queued:
                        if not done.done():
                            done.set_exception(StoreError("the broker is stopping: not written"))
                    self._queued = []
                    raise
                for (_, _, done), error in zip(batch, said, strict=True):
                    if done.done():  # its caller gave up waiting
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._flusher = None
