"""An admin's job request made into a job, or a ``BadRequest`` naming what is wrong.

Checked here with the very rules the PC applies (``protocol/jobs.py``), for
every target, before anything is recorded: a job the PC would refuse as
malformed is never created. The script is kept as text: the broker never runs
it, never hands it to a shell, and sends it only inside signed jobs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
from typing import Any

from allowhelp.broker.errors import BadRequest
from allowhelp.broker.model.jobs import JobRecord
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.jobs import ACTIONS, MAX_OUTPUT, MAX_PAYLOAD, JobSpec
from allowhelp.protocol.text import plain_text

MAX_TARGETS = 1000
MAX_AUDITED_TARGETS = 200  # targets named in one audit record
DEFAULT_TIMEOUT = 600
DEFAULT_EXPIRES_IN = 24 * 3600
MAX_EXPIRES_IN = 30 * 24 * 3600
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_FIELDS = {"targets", "action", "script", "install", "remove", "reason", "expires_in", "timeout"}


def is_group_name(value: object) -> bool:
    return isinstance(value, str) and GROUP_NAME.fullmatch(value) is not None


def target_request(body: dict[str, Any]) -> list[str] | str:
    """The ids asked for, or the group's name."""
    targets = body.get("targets")
    if isinstance(targets, dict):
        if set(targets) != {"group"} or not is_group_name(targets["group"]):
            raise BadRequest('targets must be a list of machine ids or {"group": NAME}')
        return str(targets["group"])
    if (
        not isinstance(targets, list)
        or not targets
        or len(targets) > MAX_TARGETS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in targets)
    ):
        raise BadRequest(f'targets must be 1 to {MAX_TARGETS} machine ids or {{"group": NAME}}')
    if len(set(targets)) != len(targets):
        raise BadRequest("a machine is named twice in targets")
    return list(targets)


def make_job(
    body: dict[str, Any], *, creator: str, targets: list[str], approvals_needed: int
) -> JobRecord:
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    action = body.get("action")
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
    reason = body.get("reason")
    if not isinstance(reason, str) or not plain_text(reason, 500) or len(reason) > 500:
        raise BadRequest("reason must be 1 to 500 characters: say why, it is audited and shown")
    reason = plain_text(reason, 500)  # shown on the PC, in a terminal too: no escapes
    install, remove = _names(body, "install"), _names(body, "remove")
    script = body.get("script", "")
    if not isinstance(script, str):
        raise BadRequest("script must be text")
    timeout = _whole(body, "timeout", DEFAULT_TIMEOUT)
    expires_in = _whole(body, "expires_in", DEFAULT_EXPIRES_IN)
    if not 1 <= expires_in <= MAX_EXPIRES_IN:
        raise BadRequest(f"expires_in must be 1 to {MAX_EXPIRES_IN} seconds")
    now = time.time()
    job = JobRecord(
        id="j-" + secrets.token_hex(10),
        created=now,
        created_by=creator,
        action=action,
        reason=reason,
        script=script,
        install=install,
        remove=remove,
        timeout=timeout,
        expires=now + expires_in,
        targets=tuple(targets),
        approvals_needed=approvals_needed,
        approved_by=(),
    )
    for agent_id in targets:  # every PC's copy passes the PC's own checks, and fits
        if len(spec_for(job, agent_id).payload()) > MAX_PAYLOAD:
            raise BadRequest(f"the job is too long once encoded (at most {MAX_PAYLOAD} bytes)")
    return job


def spec_for(job: JobRecord, agent_id: str) -> JobSpec:
    """The job as one PC gets it (and as the broker signs it)."""
    try:
        return JobSpec(
            job_id=job.id,
            agent_id=agent_id,
            action=job.action,  # type: ignore[arg-type]  # checked by JobSpec
            reason=job.reason,
            issuer=job.created_by,
            created=job.created,
            expires=job.expires,
            timeout=job.timeout,
            script=job.script,
            install=job.install,
            remove=job.remove,
        )
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from None


def _names(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{name} must be a list of package names")
    return tuple(value)


def _whole(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be whole seconds")
    return value


def plain_output(text: str) -> str:
    """A PC's output, kept as lines: control characters other than newline and tab dropped."""
    kept = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return kept[-MAX_OUTPUT:]


def created_details(job: JobRecord, wanted: list[str] | str) -> dict[str, object]:
    details: dict[str, object] = {
        "action": job.action,
        "reason": job.reason,
        "targets": list(job.targets[:MAX_AUDITED_TARGETS]),
        "target_count": len(job.targets),
        "expires": job.expires,
        "timeout": job.timeout,
        "approvals_needed": job.approvals_needed,
    }
    if isinstance(wanted, str):
        details["group"] = wanted
    if job.action == "script":
        details["script_sha256"] = hashlib.sha256(job.script.encode()).hexdigest()
        details["script_chars"] = len(job.script)
    else:
        details["install"], details["remove"] = list(job.install), list(job.remove)
    return details
