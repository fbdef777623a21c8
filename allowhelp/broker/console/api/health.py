"""``GET /healthz``: can the broker store and record right now? For monitoring, no login.

200 ``{"status": "ok", "store": "ok", "audit": "ok"}`` when both databases
would take a write now; 503 with ``"status": "unavailable"`` and, for the part
that would not, the reason in place of ``"ok"``.

Monitoring polls this every few seconds, so it writes nothing: no audit record
(the chain would fill with probes), no row. Each database is asked for its
write lock and let go (``BEGIN IMMEDIATE; ROLLBACK``), the store's on its
writer thread (``StoreWorker``, never on the event loop), the audit log's on a
connection of its own. A full disk takes no lock, so each part is also
unavailable while its filesystem has less than ``MIN_FREE`` left, and the
audit log while its last commit, within ``REFUSAL_MEMORY``, was refused.

Bounded: a probe that has not answered after ``PROBE_TIMEOUT`` is a 503 (a
locked database), and at most one probe per part runs at a time; a poll that
comes while one is still waiting shares it instead of queueing another.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.console.api.base import services
from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

OK = "ok"
PROBE_TIMEOUT = 3.0  # seconds: a 503 by then, never a hang
AUDIT_LOCK_WAIT = 2.0  # the audit probe's own wait for the lock (inside PROBE_TIMEOUT)
REFUSAL_MEMORY = 60.0  # seconds a refused audit commit keeps the log "unavailable"
MIN_FREE = 1024 * 1024  # bytes: below this a disk counts as full


def free_space_problem(folder: Path) -> str | None:
    try:
        stat = os.statvfs(folder)
    except OSError as exc:
        return f"cannot check the disk of {folder}: {exc.strerror or exc}"
    free = stat.f_bavail * stat.f_frsize
    return f"the disk is full ({free} bytes free)" if free < MIN_FREE else None


def audit_problem(audit: AuditLog) -> str | None:
    """Blocking (a lock wait, a statvfs): run it off the event loop."""
    folder = audit.local_folder  # None: on a database server, whose disk is not ours to see
    reason = audit.check_writable(AUDIT_LOCK_WAIT) or (
        free_space_problem(folder) if folder is not None else None
    )
    if reason is not None:
        return reason
    refusal = audit.last_refusal
    if refusal is not None and time.monotonic() - refusal[0] < REFUSAL_MEMORY:
        return f"the last audit write was refused: {refusal[1]}"
    return None


def store_problem(store: Store) -> str | None:
    """On the store's writer thread (``StoreWorker.run``)."""
    store.check_writable()
    folder = store.local_folder
    return free_space_problem(folder) if folder is not None else None


class _OneAtATime:
    """At most one probe in flight; later polls wait on the same one."""

    def __init__(self) -> None:
        self._task: asyncio.Future[str | None] | None = None

    async def ask(self, start: Callable[[], Coroutine[Any, Any, str | None]]) -> str:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(start())
            self._task.add_done_callback(_retrieve)
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._task), PROBE_TIMEOUT)
        except TimeoutError:
            return f"no answer within {PROBE_TIMEOUT:g} s (locked by another process?)"
        except StoreError as exc:
            return str(exc)
        return reason or OK


def _retrieve(task: asyncio.Future[str | None]) -> None:
    """A probe nobody waits for any more still has its outcome read (no warning)."""
    if not task.cancelled():
        task.exception()


class Health:
    def __init__(self) -> None:
        self._store = _OneAtATime()
        self._audit = _OneAtATime()

    async def answer(self, request: Request) -> Response:
        svc = services(request)
        store, audit = await asyncio.gather(
            self._store.ask(lambda: _store_probe(svc.db)),
            self._audit.ask(lambda: asyncio.to_thread(audit_problem, svc.audit)),
        )
        healthy = store == OK and audit == OK
        body = {"status": OK if healthy else "unavailable", "store": store, "audit": audit}
        return JSONResponse(
            body, status_code=200 if healthy else 503, headers={"cache-control": "no-store"}
        )


async def _store_probe(db: StoreWorker) -> str | None:
    return await db.run(store_problem)


def routes() -> list[BaseRoute]:
    return [Route("/healthz", Health().answer, methods=["GET"])]
