"""Fleet jobs on the broker: made, approved, signed, delivered, answered, expired.

Every step is audited before it happens (``job.created`` before the job exists,
``job.approved`` before it may go out, by an admin whose account is older than
the job (else ``job.approval.refused``), ``job.result`` before the result is
stored, ``job.expired`` before a waiting PC is given up: a PC that got the job
before then may still answer, and that late answer is audited and kept like any
other, ``late``). A job goes out as
one ``job.run`` per PC, signed for that PC alone (``certs/jobsign.py``), only
to PCs whose machine service said it speaks jobs (``Hello.jobs``), and again
each time such a PC connects until it has answered or the job expired. The PC
decides whether it runs (its own policy file); the broker only records what
it says. A result is accepted only from a PC the job names, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import (
    AuditUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    TunnelError,
)
from allowhelp.broker.jobs.approval import refuse_newer_approver
from allowhelp.broker.jobs.expiry import expire_due, sweep_forever
from allowhelp.broker.jobs.orders import (
    MAX_AUDITED_TARGETS,
    MAX_TARGETS,
    created_details,
    make_job,
    plain_output,
    spec_for,
    target_request,
)
from allowhelp.broker.jobs.policy import REQUIRE_APPROVAL, admins_to_agree
from allowhelp.broker.model.jobs import (
    GIVEN_UP,
    WAITING,
    JobRecord,
    JobResultRecord,
    job_state,
    state_of,
)
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.certs.jobsign import JobSigner
from allowhelp.protocol.control import JobResult, JobRun
from allowhelp.protocol.jobs import RESULT_STATES

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, object]], None]  # to admins only
EXPIRY_SWEEP = 5.0
DELIVERIES = 32  # PCs being sent their jobs (and rung, if idle) at once


class JobDesk:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        agents: AgentRegistry,
        signer: JobSigner,
        publish: Publish,
        *,
        sweep_every: float = EXPIRY_SWEEP,
    ) -> None:
        self._db = db
        self._audit = audit
        self._agents = agents
        self._signer = signer
        self._publish = publish
        self._sweep_every = sweep_every
        self._sent: dict[str, tuple[object, set[str]]] = {}  # agent → (its link, jobs sent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tampered_seen: set[str] = set()
        self._deliveries = asyncio.Semaphore(DELIVERIES)
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self._agents.subscribe(self._agent_changed)
        self._sweeper = asyncio.create_task(sweep_forever(self._sweep_every, self.expire_due))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # the admin's side

    async def create(self, actor: str, username: str, body: dict[str, Any]) -> JobRecord:
        wanted = target_request(body)
        targets = await self._resolve(wanted)
        needed = await self._approvals_needed()
        job = make_job(body, creator=username, targets=targets, approvals_needed=needed)
        job = replace(job, seal=self._signer.seal(job.sealed))
        await self._audit.write(
            "job.created",
            actor=actor,
            target=job.id,
            details=created_details(job, wanted),
        )
        try:
            await self._db.run(Store.add_job, job)
        except StoreError:
            await self._audit.write(
                "job.expired",
                actor="system",
                target=job.id,
                details={"agents": [], "why": "the broker database is unavailable: never sent"},
            )
            raise
        self._publish({"type": "job", "job": await self.view(job.id)})
        if job.approved:
            self._deliver_all(job.targets)
        return job

    async def approve(self, actor: str, username: str, job_id: str) -> JobRecord:
        job = await self._job(job_id)
        if job.approved:
            raise Conflict("this job needs no more approval", code="already_approved")
        if not await self._db.read(Store.job_waits, job.id):
            raise Conflict("this job was cancelled", code="job_cancelled")
        if username == job.created_by or username in job.approved_by:
            raise Forbidden("a second admin must approve: not the one who made it or approved")
        await refuse_newer_approver(self._db, self._audit, actor, username, job)
        if time.time() >= job.expires:
            raise Conflict("this job has expired", code="job_expired")
        if not self._signer.seal_ok(job.sealed, job.seal):
            await self._tampered(job)
            raise Conflict("this job was changed outside allowhelp", code="job_tampered")
        approved = replace(job, approved_by=(*job.approved_by, username))
        await self._audit.write(
            "job.approved",
            actor=actor,
            target=job.id,
            details={"approved_by": list(approved.approved_by), "needed": job.approvals_needed},
        )
        seal = self._signer.seal(approved.sealed)
        await self._db.run(Store.approve_job, job.id, approved.approved_by, seal)
        job = await self._job(job_id)
        self._publish({"type": "job", "job": await self.view(job.id)})
        if job.approved:
            self._deliver_all(job.targets)
        return job

    async def cancel(self, actor: str, job_id: str) -> JobRecord:
        """No PC gets the job from now on (one running it finishes: its answer is
        kept); one awaiting approval can no longer be approved."""
        job = await self._job(job_id)
        waiting = [r.agent_id for r in await self._db.read(Store.job_results, job.id)
                   if r.state == WAITING]  # fmt: skip
        if not waiting:
            raise Conflict("every PC has answered or the job is over", code="job_over")
        await self._audit.write(
            "job.cancelled",
            actor=actor,
            target=job.id,
            details={"agents": waiting[:MAX_AUDITED_TARGETS], "count": len(waiting)},
        )
        await self._db.run(Store.cancel_waiting, job.id, time.time())
        for agent_id in waiting:
            self._forget_sent(agent_id, job.id)
        self._publish({"type": "job", "job": await self.view(job.id)})
        return job

    async def view(self, job_id: str) -> dict[str, object]:
        job = await self._job(job_id)
        results = await self._db.read(Store.job_results, job.id)
        hostnames = {a.id: a.hostname for a in await self._db.read(Store.agents, with_removed=True)}
        rows = []
        for result in results:
            row = result.to_json()
            row["hostname"] = hostnames.get(result.agent_id, "")
            rows.append(row)
        return {**job.summary_json(), "state": job_state(job, results), "results": rows}

    async def listing(self) -> list[dict[str, object]]:
        jobs = await self._db.read(Store.jobs)
        all_counts = await self._db.read(Store.result_counts)
        listed = []
        for job in jobs:
            counts = all_counts.get(job.id, {})
            summary = job.summary_json()
            summary.pop("script")
            listed.append({**summary, "state": state_of(job, counts), "counts": counts})
        return listed

    async def _job(self, job_id: str) -> JobRecord:
        job = await self._db.read(Store.job, job_id)
        if job is None:
            raise NotFound("no such job")
        return job

    async def _resolve(self, wanted: list[str] | str) -> list[str]:
        if isinstance(wanted, str):
            members = await self._db.read(Store.group_members, wanted)
            if not members:
                raise BadRequest(f"the group {wanted!r} has no machines")
            if len(members) > MAX_TARGETS:
                raise BadRequest(
                    f"the group {wanted!r} has {len(members)} machines: a job takes at most"
                    f" {MAX_TARGETS} (split the group)",
                    code="too_many_targets",
                )
            return members
        known = {a.id for a in await self._db.read(Store.agents)}
        unknown = [agent_id for agent_id in wanted if agent_id not in known]
        if unknown:
            raise BadRequest(f"no such machine: {unknown[0][:64]}")
        return wanted

    async def _approvals_needed(self) -> int:
        return admins_to_agree(await self._db.read(Store.policy, REQUIRE_APPROVAL)) - 1

    # the PCs' side

    def _agent_changed(self, agent_id: str, online: bool) -> None:
        if not online:
            self._sent.pop(agent_id, None)
            return
        self._deliver_all((agent_id,))

    def _deliver_all(self, agent_ids: tuple[str, ...] | list[str]) -> None:
        """Each PC's jobs sent in a task of its own, ``DELIVERIES`` at once: the
        admin's request does not wait while idle PCs are rung (up to 20 s each)."""
        for agent_id in agent_ids:
            task = asyncio.create_task(self._deliver_in_turn(agent_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_in_turn(self, agent_id: str) -> None:
        async with self._deliveries:
            await self.deliver(agent_id)

    async def deliver(self, agent_id: str) -> None:
        """Send this PC every approved, unexpired job it has not answered and
        not been sent on this tunnel yet."""
        live = self._agents.get(agent_id)
        if live is None or not live.jobs:
            return
        try:
            waiting = await self._db.read(Store.waiting_jobs, agent_id)
        except StoreError as exc:
            log.error("agent=%s jobs not delivered: %s", agent_id, exc)
            return
        now = time.time()
        if not any(j.approved and j.expires > now for j in waiting):
            return
        # still the same tunnel after the wait? An idle agent is rung for its jobs first.
        live = await self._agents.wake(agent_id, "job.run")
        if live is None:
            log.info("agent=%s jobs not delivered: it is offline or did not wake", agent_id)
            return
        link, sent = self._sent.get(agent_id, (None, set()))
        if link is not live.link:
            sent = set()
            self._sent[agent_id] = (live.link, sent)
        link = live.link  # the tunnel just woken: every job below goes over it alone
        now = time.time()  # the wake may have taken a while: expired meanwhile is not sent
        for job in waiting:
            if job.id in sent or not job.approved or job.expires <= now:
                continue
            if not self._signer.seal_ok(job.sealed, job.seal):
                await self._tampered(job)
                continue
            spec = spec_for(job, agent_id)
            payload = spec.payload()
            message = JobRun(
                job_id=job.id, payload=spec.encoded(), signature=self._signer.sign(payload)
            )
            try:
                woken = self._agents.still(agent_id, link)
                if woken is None:
                    raise TunnelError("its tunnel went")
                woken.send(message)
            except TunnelError as exc:  # the tunnel went: sent again when it is back
                log.warning("agent=%s job=%s not sent: %s", agent_id, job.id, exc)
                return
            sent.add(job.id)
            log.info("agent=%s job=%s sent", agent_id, job.id)

    async def _tampered(self, job: JobRecord) -> None:
        """A stored job that is not as the broker sealed it: on the record (once per
        job while this broker runs), never sent."""
        if job.id in self._tampered_seen:
            return
        log.error("job=%s is not as it was made (its seal does not match): not sent", job.id)
        with contextlib.suppress(AuditUnavailable):  # said by the writer; not sent all the same
            await self._audit.write(
                "job.tampered",
                actor="system",
                target=job.id,
                details={"why": "the stored job does not match the broker's seal: not sent"},
            )
            self._tampered_seen.add(job.id)

    async def on_result(self, agent_id: str, message: JobResult) -> None:
        job = await self._db.read(Store.job, message.job_id)
        if job is None or agent_id not in job.targets:
            log.warning(
                "agent=%s reported on job %s, which is not its own", agent_id, message.job_id
            )
            return
        if message.state not in RESULT_STATES:
            log.warning("agent=%s job=%s: unknown state %r", agent_id, job.id, message.state)
            return
        current = {r.agent_id: r for r in await self._db.read(Store.job_results, job.id)}
        was = current[agent_id].state
        late = was in GIVEN_UP  # given up on, but the PC got it before: what it did counts
        if not (was == WAITING or (late and message.state != "expired")):
            return  # said before (a resend crossed the answer)
        output = plain_output(message.output)
        digest = hashlib.sha256(output.encode()).hexdigest()
        exit_code = message.exit_code if message.exit_code >= 0 else None
        self._forget_sent(agent_id, job.id)  # if this is not recorded, it is sent again
        await self._audit.write(
            "job.result",
            actor=f"agent:{agent_id}",
            target=job.id,
            details={
                "agent_id": agent_id,
                "state": message.state,
                "exit_code": exit_code,
                "output_sha256": digest,
                "output_chars": len(output),
                **({"late": True} if late else {}),
            },
        )
        await self._db.run(
            Store.finish_result,
            job.id,
            agent_id,
            state=message.state,
            exit_code=exit_code,
            output=output,
            output_sha256=digest,
            started=message.started or None,
            finished=message.finished or None,
            was=was,
        )
        result = JobResultRecord(
            job.id,
            agent_id,
            message.state,
            exit_code,
            output,
            digest,
            message.started or None,
            message.finished or None,
        )
        self._publish({"type": "job_result", "job_id": job.id, "result": result.to_json()})

    def _forget_sent(self, agent_id: str, job_id: str) -> None:
        """A PC's answer that the broker fails to record is asked for again (the job
        goes out again at the PC's next connect or hello; the PC answers from its
        own record, never running it twice)."""
        _, sent = self._sent.get(agent_id, (None, set()))
        sent.discard(job_id)

    # expiry

    async def expire_due(self) -> None:
        for job_id in await expire_due(self._db, self._audit):
            self._publish({"type": "job", "job": await self.view(job_id)})
