"""Who may approve a fleet job: an admin whose account is older than the job.

Two-admin approval is two accounts, and an admin can make accounts
(``POST /api/v1/users``). An account made after the job was asked for is refused:
an admin cannot ask for a job, then make a second admin account and approve it
with that. The refusal is on the record (``job.approval.refused``) before the
answer. Accounts made before the job, and a technician promoted to admin after
it, are not told apart from a second person (``docs/jobs.md``).
"""

from __future__ import annotations

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import Forbidden
from allowhelp.broker.model.jobs import JobRecord
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker

TOO_NEW = "the approving account was made after the job"


async def refuse_newer_approver(
    db: StoreWorker, audit: AuditLog, actor: str, username: str, job: JobRecord
) -> None:
    """Return when ``username``'s account existed when ``job`` was made; else record
    the refusal and raise ``Forbidden`` (``approver_too_new``)."""
    accounts = await db.read(Store.users)  # a desk's staff: a few rows
    created = next((user.created for user in accounts if user.username == username), None)
    if created is not None and created < job.created:
        return
    await audit.write(
        "job.approval.refused",
        actor=actor,
        target=job.id,
        details={
            "why": TOO_NEW,
            "account_created": created,
            "job_created": job.created,
        },
    )
    raise Forbidden(
        "an account made after this job cannot approve it: an admin whose account"
        " existed when the job was made must approve",
        code="approver_too_new",
    )
