"""How many PCs one job may name: a group counts as its members, under the same
limit as a list (``orders.MAX_TARGETS``). The store is a stand-in: only the desk's
own rule is under test (the real store's groups: ``test_fleet_jobs.py``)."""

from __future__ import annotations

from typing import cast

import pytest

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import BadRequest
from allowhelp.broker.jobs.desk import JobDesk
from allowhelp.broker.jobs.orders import MAX_TARGETS
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.certs.jobsign import JobSigner


class Groups:
    """A store whose one group has ``size`` members."""

    def __init__(self, size: int) -> None:
        self.size = size

    async def read(self, query: object, *args: object) -> list[str]:
        assert query is Store.group_members, query
        return [f"a-{n:020d}" for n in range(self.size)]


def desk(size: int) -> JobDesk:
    return JobDesk(
        cast(StoreWorker, Groups(size)),
        cast(AuditLog, None),
        cast(AgentRegistry, None),
        cast(JobSigner, None),
        lambda _: None,
    )


async def test_a_group_larger_than_a_job_may_name_is_refused() -> None:
    assert len(await desk(MAX_TARGETS)._resolve("Namur office")) == MAX_TARGETS
    with pytest.raises(BadRequest) as refused:
        await desk(MAX_TARGETS + 1)._resolve("Namur office")
    assert refused.value.code == "too_many_targets"
    assert f"{MAX_TARGETS + 1} machines" in refused.value.message
