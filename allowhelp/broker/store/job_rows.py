"""Fleet jobs and their results, the machines' groups and inventory."""

from __future__ import annotations

import json
import time

from allowhelp.broker.model.database import Row
from allowhelp.broker.model.jobs import CANCELLED, WAITING, JobRecord, JobResultRecord
from allowhelp.broker.store.core import StoreCore

MAX_JOBS_LISTED = 200


def _job(row: Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        created=row["created"],
        created_by=row["created_by"],
        action=row["action"],
        reason=row["reason"],
        script=row["script"],
        install=tuple(json.loads(row["install"])),
        remove=tuple(json.loads(row["remove"])),
        timeout=row["timeout"],
        expires=row["expires"],
        targets=tuple(json.loads(row["targets"])),
        approvals_needed=row["approvals_needed"],
        approved_by=tuple(json.loads(row["approved_by"])),
        seal=row["seal"],
    )


def _result(row: Row) -> JobResultRecord:
    return JobResultRecord(
        job_id=row["job_id"],
        agent_id=row["agent_id"],
        state=row["state"],
        exit_code=row["exit_code"],
        output=row["output"],
        output_sha256=row["output_sha256"],
        started=row["started"],
        finished=row["finished"],
    )


class JobStore(StoreCore):
    def add_job(self, job: JobRecord) -> None:
        """The job and one waiting result per target, in one transaction."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, created, created_by, action, reason, script, install,"
                " remove, timeout, expires, targets, approvals_needed, approved_by, seal)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.created,
                    job.created_by,
                    job.action,
                    job.reason,
                    job.script,
                    json.dumps(list(job.install)),
                    json.dumps(list(job.remove)),
                    job.timeout,
                    job.expires,
                    json.dumps(list(job.targets)),
                    job.approvals_needed,
                    json.dumps(list(job.approved_by)),
                    job.seal,
                ),
            )
            db.executemany(
                "INSERT INTO job_results (job_id, agent_id, state) VALUES (?, ?, ?)",
                [(job.id, agent_id, WAITING) for agent_id in job.targets],
            )

    def job(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, limit: int = MAX_JOBS_LISTED) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [_job(row) for row in rows]

    def job_results(self, job_id: str) -> list[JobResultRecord]:
        rows = self._query(
            "SELECT * FROM job_results WHERE job_id = ? ORDER BY agent_id", (job_id,)
        )
        return [_result(row) for row in rows]

    def result_counts(self, limit: int = MAX_JOBS_LISTED) -> dict[str, dict[str, int]]:
        """job id → {result state: how many PCs}, for the newest ``limit`` jobs, in one query."""
        rows = self._query(
            "SELECT job_id, state, COUNT(*) AS n FROM job_results WHERE job_id IN"
            " (SELECT id FROM jobs ORDER BY created DESC LIMIT ?) GROUP BY job_id, state",
            (limit,),
        )
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["job_id"], {})[row["state"]] = row["n"]
        return counts

    def approve_job(self, job_id: str, approved_by: tuple[str, ...], seal: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET approved_by = ?, seal = ? WHERE id = ?",
                (json.dumps(list(approved_by)), seal, job_id),
            )

    def job_waits(self, job_id: str) -> bool:
        """Whether some PC is still to get (or answer) the job."""
        rows = self._query(
            "SELECT 1 FROM job_results WHERE job_id = ? AND state = ? LIMIT 1", (job_id, WAITING)
        )
        return bool(rows)

    def cancel_waiting(self, job_id: str, finished: float) -> None:
        """The job's waiting results cancelled (the desk has said which, on the record)."""
        with self._tx() as db:
            db.execute(
                "UPDATE job_results SET state = ?, finished = ? WHERE job_id = ? AND state = ?",
                (CANCELLED, finished, job_id, WAITING),
            )

    def waiting_jobs(self, agent_id: str) -> list[JobRecord]:
        """Jobs this PC has not answered yet, oldest first (approved or not)."""
        rows = self._query(
            "SELECT jobs.* FROM jobs JOIN job_results ON job_results.job_id = jobs.id"
            " WHERE job_results.agent_id = ? AND job_results.state = ? ORDER BY jobs.created",
            (agent_id, WAITING),
        )
        return [_job(row) for row in rows]

    def finish_result(
        self,
        job_id: str,
        agent_id: str,
        *,
        state: str,
        exit_code: int | None,
        output: str,
        output_sha256: str,
        started: float | None,
        finished: float | None,
        was: str = WAITING,
    ) -> bool:
        """Record a PC's answer once; False when its state was not ``was`` (a replay).
        ``was`` "expired": a PC's late answer to a job it got before it expired."""
        with self._tx() as db:
            done = db.execute(
                "UPDATE job_results SET state = ?, exit_code = ?, output = ?, output_sha256 = ?,"
                " started = ?, finished = ? WHERE job_id = ? AND agent_id = ? AND state = ?",
                (
                    state,
                    exit_code,
                    output,
                    output_sha256,
                    started,
                    finished,
                    job_id,
                    agent_id,
                    was,
                ),
            )
            return done.rowcount == 1

    def expired_waiting(self, now: float) -> list[tuple[str, str]]:
        rows = self._query(
            "SELECT job_results.job_id, job_results.agent_id FROM job_results"
            " JOIN jobs ON jobs.id = job_results.job_id"
            " WHERE job_results.state = ? AND jobs.expires <= ?",
            (WAITING, now),
        )
        return [(row["job_id"], row["agent_id"]) for row in rows]

    # groups

    def set_groups(self, agent_id: str, names: list[str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM agent_groups WHERE agent_id = ?", (agent_id,))
            db.executemany(
                "INSERT INTO agent_groups (agent_id, name) VALUES (?, ?)",
                [(agent_id, name) for name in names],
            )

    def all_groups(self) -> dict[str, list[str]]:
        """agent id → its groups, sorted."""
        found: dict[str, list[str]] = {}
        for row in self._query("SELECT agent_id, name FROM agent_groups ORDER BY name"):
            found.setdefault(row["agent_id"], []).append(row["name"])
        return found

    def group_members(self, name: str) -> list[str]:
        rows = self._query(
            "SELECT agent_groups.agent_id FROM agent_groups"
            " JOIN agents ON agents.id = agent_groups.agent_id"
            " WHERE agent_groups.name = ? AND agents.removed = 0 ORDER BY agent_groups.agent_id",
            (name,),
        )
        return [row["agent_id"] for row in rows]

    # inventory

    def set_inventory(self, agent_id: str, inventory: dict[str, object]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO agent_inventory (agent_id, inventory, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(agent_id) DO UPDATE SET inventory = excluded.inventory,"
                " updated = excluded.updated",
                (agent_id, json.dumps(inventory), time.time()),
            )

    def inventory(self, agent_id: str) -> tuple[dict[str, object], float] | None:
        rows = self._query(
            "SELECT inventory, updated FROM agent_inventory WHERE agent_id = ?", (agent_id,)
        )
        if not rows:
            return None
        value = json.loads(rows[0]["inventory"])
        return (value if isinstance(value, dict) else {}), rows[0]["updated"]
