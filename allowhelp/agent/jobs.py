"""Fleet jobs on this PC: checked, run once, answered, remembered.

Only the machine service (root) has one of these. A ``job.run`` from the
broker runs only when all of these hold, checked in this order:

1. the signature is the pinned broker key's (``certs/jobsign.py``) over the
   exact payload, and the payload is a well-formed job (``protocol/jobs.py``);
2. the job names this PC (its agent id) and the id it came under;
3. it has not expired (by this PC's clock);
4. this PC's own ``policy.toml`` enables jobs and allows that action,
   read again now (``fleetpolicy.py``).

Whatever the outcome, the broker gets a ``job.result`` saying so. A job is
run at most once: results are kept in ``DIR/jobs.json`` (root's alone, bounded)
and a job the broker sends again (it resends until it has a result) is
answered from there. So no job runs unless that record can be read and the
job's "interrupted" mark written to it first: a record that cannot (a full disk,
a damaged file, left in place for the PC's admin to look at) refuses every job
until it can, instead of forgetting what ran. This path is apart from the
consent gate: it opens no channel and grants nothing to a session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.agent.config import write_private
from allowhelp.agent.errors import AgentError
from allowhelp.agent.history import History
from allowhelp.protocol.control import JobResult, JobRun, Message
from allowhelp.protocol.hostile_json import ProtocolError

if TYPE_CHECKING:
    from allowhelp.protocol.jobs import JobSpec

log = logging.getLogger(__name__)

RESULTS_FILE = "jobs.json"
INTERRUPTED = (
    "interrupted: the machine service stopped while this job ran; it was not run again "
    "(see the PC's logs for how far it got)"
)
MAX_RESULTS = 500
UNUSABLE = "refused: this PC cannot keep its record of jobs run, so this one could run twice"
Sender = Callable[[Message], None]
Notify = Callable[[str], None]


class JobRecordUnusable(AgentError):
    """``jobs.json`` cannot be read or written: no job may run (it could run twice)."""


@dataclass(frozen=True)
class Kept:
    """A job's result as this PC keeps it (to answer a resend the same way)."""

    job_id: str
    state: str
    exit_code: int
    output: str
    started: float
    finished: float

    def message(self) -> JobResult:
        return JobResult(**asdict(self))


class JobKeeper:
    def __init__(
        self,
        folder: Path,
        *,
        agent_id: str,
        broker_key: str,
        history: History,
        notify: Notify | None = None,
    ) -> None:
        self._folder = folder
        self._agent_id = agent_id
        self._broker_key = broker_key
        self._history = history
        self._notify = notify
        self._running: dict[str, asyncio.Task[None]] = {}
        self._send: Sender | None = None

    def attach(self, send: Sender | None) -> None:
        self._send = send

    @property
    def running(self) -> bool:
        """A job is running (its answer is owed): the service may not restart now."""
        return bool(self._running)

    def received(self, message: JobRun) -> None:
        try:
            kept = self._results().get(message.job_id)
        except JobRecordUnusable as exc:
            log.error("job=%s refused: %s", message.job_id, exc)
            self._answer(_kept(message.job_id, "refused", f"{UNUSABLE} ({exc})", time.time()))
            return
        if kept is not None:  # run (or refused) before: the same answer again
            self._answer(kept)
            return
        if message.job_id in self._running:
            return  # it answers when it ends
        verdict = self._check(message)
        if isinstance(verdict, tuple):
            kept, keep = verdict
            if keep:  # a forged or foreign job is not remembered: it may not claim an id
                self._remember(kept, None)
            self._answer(kept)
            return
        task = asyncio.create_task(self._run(verdict))
        self._running[message.job_id] = task
        task.add_done_callback(lambda _: self._running.pop(message.job_id, None))

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def _check(self, message: JobRun) -> JobSpec | tuple[Kept, bool]:
        # what checks and runs a job loads with the first job (an idle PC has none)
        from allowhelp.agent.fleetpolicy import FleetPolicy  # noqa: PLC0415
        from allowhelp.certs.jobsign import job_signature_ok  # noqa: PLC0415
        from allowhelp.protocol.jobs import JobSpec  # noqa: PLC0415

        now = time.time()
        try:
            spec, payload = JobSpec.from_encoded(message.payload)
        except ProtocolError as exc:
            log.warning("job=%s refused: malformed (%s)", message.job_id, exc)
            why = f"refused: the job is malformed ({exc})"
            return _kept(message.job_id, "refused", why, now), False
        if not job_signature_ok(self._broker_key, payload, message.signature):
            log.warning("job=%s refused: not signed by the pinned broker key", message.job_id)
            why = "refused: the job's signature is not the pinned broker key's"
            return _kept(message.job_id, "refused", why, now), False
        if spec.job_id != message.job_id or spec.agent_id != self._agent_id:
            log.warning("job=%s refused: it names another PC or job", message.job_id)
            why = "refused: this job names another PC"
            return _kept(message.job_id, "refused", why, now), False
        if spec.expires <= now:
            log.info("job=%s not run: it expired", spec.job_id)
            why = "not run: the job expired before it arrived"
            return _kept(spec.job_id, "expired", why, now), True
        refusal = FleetPolicy.load(self._folder).refusal(spec.action)
        if refusal:
            log.info("job=%s refused: %s", spec.job_id, refusal)
            kept = _kept(spec.job_id, "refused", f"refused: {refusal}", now)
            self._write_history(spec, kept)
            return kept, True
        return spec

    async def _run(self, spec: JobSpec) -> None:
        from allowhelp.agent.fleetpolicy import FleetPolicy  # noqa: PLC0415
        from allowhelp.agent.jobrun import run_job  # noqa: PLC0415

        log.info("job=%s %s for %s: %s", spec.job_id, spec.action, spec.issuer, spec.reason)
        policy = FleetPolicy.load(self._folder)
        # Written before it starts: if the service stops half-way, the job is
        # answered as interrupted when the broker sends it again, never run twice.
        now = time.time()
        unusable = self._remember(_kept(spec.job_id, "failed", INTERRUPTED, now), None)
        if unusable is not None:  # not marked: a resend after a lost answer would run it again
            self._answer(_kept(spec.job_id, "refused", f"{UNUSABLE} ({unusable})", now))
            return
        outcome = await run_job(spec, apt_config=policy.apt_config)
        kept = Kept(
            spec.job_id,
            outcome.state,
            outcome.exit_code,
            outcome.output,
            outcome.started,
            outcome.finished,
        )
        log.info("job=%s %s (exit %d)", spec.job_id, kept.state, kept.exit_code)
        self._remember(kept, spec)
        self._answer(kept)
        if self._notify is not None:
            at = time.strftime("%H:%M", time.localtime(kept.finished))
            verb = "" if kept.state == "succeeded" else f" ({kept.state.replace('_', ' ')})"
            self._notify(f"IT {spec.summary()} on this PC at {at}{verb}")

    def _answer(self, kept: Kept) -> None:
        if self._send is not None:
            self._send(kept.message())

    def _remember(self, kept: Kept, spec: JobSpec | None) -> str | None:
        """Keep ``kept`` in the record; None once kept, else why it could not be."""
        problem = None
        try:
            results = self._results()
            results[kept.job_id] = kept
            newest = sorted(results.values(), key=lambda k: k.finished)[-MAX_RESULTS:]
            write_private(
                self._folder / RESULTS_FILE,
                json.dumps({k.job_id: asdict(k) for k in newest}) + "\n",
            )
        except (OSError, JobRecordUnusable) as exc:
            problem = str(exc) if isinstance(exc, JobRecordUnusable) else exc.strerror or str(exc)
            log.error("job=%s result not kept: %s", kept.job_id, problem)
        if spec is not None:
            self._write_history(spec, kept)
        return problem

    def _write_history(self, spec: JobSpec, kept: Kept) -> None:
        try:
            self._history.add(
                {
                    "what": "job",
                    "id": spec.job_id,
                    "action": spec.action,
                    "summary": spec.summary(),
                    "install": list(spec.install),
                    "remove": list(spec.remove),
                    "by": spec.issuer,
                    "reason": spec.reason,
                    "state": kept.state,
                    "exit_code": kept.exit_code,
                }
            )
        except OSError as exc:
            log.error("job=%s not written to the history: %s", spec.job_id, exc)

    def _results(self) -> dict[str, Kept]:
        try:
            raw = json.loads((self._folder / RESULTS_FILE).read_text())
            return {key: Kept(**value) for key, value in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:  # left as it is, for the PC's admin
            path = self._folder / RESULTS_FILE
            raise JobRecordUnusable(
                f"{path} cannot be read ({exc}): repair or remove it, knowing that a job it "
                "names may then run again"
            ) from exc


def _kept(job_id: str, state: str, output: str, now: float) -> Kept:
    return Kept(job_id, state, -1, output, now, now)
