"""Fleet jobs as the store hands them out: the job, and one result per target PC."""

from __future__ import annotations

import json
from dataclasses import dataclass

# A result is "pending" until the PC reports; "expired" when its time ran out
# first, "cancelled" when an admin cancelled the job first; else what the PC said
# (protocol/jobs.py RESULT_STATES). A PC that had the job before either may still
# answer: its answer replaces them (``JobDesk.on_result``, ``late``).
WAITING = "pending"
CANCELLED = "cancelled"
GIVEN_UP = ("expired", CANCELLED)
FINAL_STATES = ("succeeded", "failed", "timed_out", "refused", *GIVEN_UP)
SEALED = (
    "id",
    "created",
    "created_by",
    "action",
    "reason",
    "script",
    "install",
    "remove",
    "timeout",
    "expires",
    "targets",
    "approvals_needed",
    "approved_by",
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    created: float
    created_by: str
    action: str
    reason: str
    script: str
    install: tuple[str, ...]
    remove: tuple[str, ...]
    timeout: int
    expires: float
    targets: tuple[str, ...]
    approvals_needed: int
    approved_by: tuple[str, ...]
    seal: str = ""  # the broker's, over ``sealed`` (certs/jobsign.py); "" before sealing

    @property
    def sealed(self) -> bytes:
        """What the seal covers: everything that says what runs, where, until when, and
        who agreed (the fields in a fixed order, as JSON)."""
        fields = self.summary_json()
        return json.dumps([fields[name] for name in SEALED], ensure_ascii=False).encode()

    @property
    def approved(self) -> bool:
        return len(self.approved_by) >= self.approvals_needed

    def summary_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "created": self.created,
            "created_by": self.created_by,
            "action": self.action,
            "reason": self.reason,
            "script": self.script,
            "install": list(self.install),
            "remove": list(self.remove),
            "timeout": self.timeout,
            "expires": self.expires,
            "targets": list(self.targets),
            "approvals_needed": self.approvals_needed,
            "approved_by": list(self.approved_by),
        }


@dataclass(frozen=True)
class JobResultRecord:
    job_id: str
    agent_id: str
    state: str
    exit_code: int | None
    output: str
    output_sha256: str
    started: float | None
    finished: float | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, object]:
        return {
            "agent_id": self.agent_id,
            "state": self.state,
            "exit_code": self.exit_code,
            "output": self.output,
            "output_sha256": self.output_sha256,
            "started": self.started,
            "finished": self.finished,
        }


def job_state(job: JobRecord, results: list[JobResultRecord]) -> str:
    """awaiting_approval | running (some PC has not answered) | done | cancelled (an
    admin cancelled it, approved or not: some PC's result says so)."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.state] = counts.get(result.state, 0) + 1
    return state_of(job, counts)


def state_of(job: JobRecord, counts: dict[str, int]) -> str:
    """``job_state`` from how many results are in each state."""
    if not counts.get(WAITING, 0):
        return CANCELLED if counts.get(CANCELLED, 0) else "done"
    return "running" if job.approved else "awaiting_approval"
