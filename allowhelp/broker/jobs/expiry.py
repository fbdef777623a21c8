"""The job expiry sweep: what it does (``expire_due``: the PCs a job's time ran out
for are given up, ``job.expired`` first), and its loop, every few seconds, through
outages of the store or the audit log, said once when it starts failing and once
when it runs again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import AuditUnavailable, StoreError
from allowhelp.broker.jobs.orders import MAX_AUDITED_TARGETS
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

log = logging.getLogger(__name__)


async def sweep_forever(every: float, sweep: Callable[[], Awaitable[None]]) -> None:
    failing = False  # said once per outage, not every few seconds
    while True:
        await asyncio.sleep(every)
        try:
            await sweep()
        except (StoreError, AuditUnavailable) as exc:  # the next sweep tries again
            if not failing:
                log.error("the job expiry sweep cannot run until this clears: %s", exc)
            failing = True
            continue
        except Exception:  # a fault of ours: logged in full, every time
            log.exception("the job expiry sweep failed")
            continue
        if failing:
            log.info("the job expiry sweep runs again")
        failing = False


async def expire_due(db: StoreWorker, audit: AuditLog) -> list[str]:
    """Give up the PCs whose jobs' time ran out before they answered; the jobs."""
    due: dict[str, list[str]] = {}
    for job_id, agent_id in await db.read(Store.expired_waiting, time.time()):
        due.setdefault(job_id, []).append(agent_id)
    for job_id, agent_ids in due.items():
        await audit.write(
            "job.expired",
            actor="system",
            target=job_id,
            details={"agents": agent_ids[:MAX_AUDITED_TARGETS], "count": len(agent_ids)},
        )
        for agent_id in agent_ids:
            await db.run(
                Store.finish_result,
                job_id,
                agent_id,
                state="expired",
                exit_code=None,
                output="",
                output_sha256="",
                started=None,
                finished=time.time(),
            )
    return list(due)
