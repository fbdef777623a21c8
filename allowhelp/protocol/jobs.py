"""Fleet jobs as both ends see them, without I/O: the signed job and its checks.

A job for one PC travels as ``job.run`` (``control.py``): ``payload`` is the
job's canonical JSON (sorted keys, no spaces) in base64, ``signature`` the
broker's Ed25519 signature over it (``certs/jobsign.py``). The PC decodes the
payload with ``JobSpec.from_payload``, which type-checks and bounds every field
exactly as the broker did before signing: a job the broker could not have made
is refused as malformed, signed or not.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass
from typing import Literal

from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.kinds import is_session_id

Action = Literal["packages", "script"]
ACTIONS: tuple[Action, ...] = ("packages", "script")
# What a PC reports; "pending"/"sent" are the broker's own (not yet reported).
ResultState = Literal["succeeded", "failed", "timed_out", "refused", "expired"]
RESULT_STATES: tuple[ResultState, ...] = ("succeeded", "failed", "timed_out", "refused", "expired")

MAX_SCRIPT = 8000  # characters of script text
MAX_PAYLOAD = 11000  # bytes of canonical JSON: base64 of it fits a 16 KiB control line
MAX_PACKAGES = 50
MAX_REASON = 500
MAX_OUTPUT = 8000  # characters of output a PC sends back (the end of it)
MIN_TIMEOUT, MAX_TIMEOUT = 10, 3600
# Debian policy §5.6.1: lower case, digits, + - . ; at least two characters.
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}")
_AGENT_ID = re.compile(r"[a-z0-9][a-z0-9-]{7,63}")


def is_package_name(value: object) -> bool:
    return isinstance(value, str) and _PACKAGE.fullmatch(value) is not None


def is_job_id(value: object) -> bool:
    return is_session_id(value)


@dataclass(frozen=True)
class JobSpec:
    """One job for one PC: what to do, why, who asked, until when."""

    job_id: str
    agent_id: str
    action: Action
    reason: str
    issuer: str
    created: float
    expires: float
    timeout: int
    script: str = ""
    install: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self)

    def payload(self) -> bytes:
        """The canonical bytes the broker signs and the PC checks."""
        data = asdict(self)
        data["install"], data["remove"] = list(self.install), list(self.remove)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def encoded(self) -> str:
        return base64.b64encode(self.payload()).decode("ascii")

    @classmethod
    def from_encoded(cls, text: str) -> tuple[JobSpec, bytes]:
        """The job and its exact payload bytes (what the signature covers)."""
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("job payload is not base64") from None
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError("job payload is too long")
        raw = parse_json(payload, "job payload", limit=2)
        if not isinstance(raw, dict):
            raise ProtocolError("job payload is not a JSON object")
        try:
            spec = cls(
                job_id=raw["job_id"],
                agent_id=raw["agent_id"],
                action=raw["action"],
                reason=raw["reason"],
                issuer=raw["issuer"],
                created=raw["created"],
                expires=raw["expires"],
                timeout=raw["timeout"],
                script=raw.get("script", ""),
                install=_names(raw.get("install", [])),
                remove=_names(raw.get("remove", [])),
            )
        except KeyError as exc:
            raise ProtocolError(f"job payload has no {exc.args[0]}") from None
        if spec.payload() != payload:
            raise ProtocolError("job payload is not in canonical form")
        return spec, payload

    def summary(self) -> str:
        """What was done, in a few words a user understands."""
        if self.action == "script":
            return "ran a script"
        parts = []
        if self.install:
            parts.append("installed " + ", ".join(self.install))
        if self.remove:
            parts.append("removed " + ", ".join(self.remove))
        return "; ".join(parts)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ProtocolError("package lists must be lists")
    return tuple(value)


def _check(spec: JobSpec) -> None:
    """Raise ``ProtocolError`` (a ``ValueError``) naming the first bad field."""
    if not is_job_id(spec.job_id):
        raise ProtocolError("job_id is malformed")
    if not isinstance(spec.agent_id, str) or not _AGENT_ID.fullmatch(spec.agent_id):
        raise ProtocolError("agent_id is malformed")
    if spec.action not in ACTIONS:
        raise ProtocolError(f"action must be one of {', '.join(ACTIONS)}")
    for name, limit in (("reason", MAX_REASON), ("issuer", 100), ("script", MAX_SCRIPT)):
        value = getattr(spec, name)
        if not isinstance(value, str) or len(value) > limit:
            raise ProtocolError(f"{name} must be text of at most {limit} characters")
    for name in ("created", "expires"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e11:
            raise ProtocolError(f"{name} must be a time")
    if isinstance(spec.timeout, bool) or not isinstance(spec.timeout, int):
        raise ProtocolError("timeout must be whole seconds")
    if not MIN_TIMEOUT <= spec.timeout <= MAX_TIMEOUT:
        raise ProtocolError(f"timeout must be {MIN_TIMEOUT} to {MAX_TIMEOUT} seconds")
    _check_action(spec)


def _check_action(spec: JobSpec) -> None:
    if spec.action == "script":
        if not spec.script.strip() or spec.install or spec.remove:
            raise ProtocolError("a script job has a script and no packages")
        return
    if spec.script or not (spec.install or spec.remove):
        raise ProtocolError("a packages job names packages to install or remove, and no script")
    names = spec.install + spec.remove
    if len(names) > MAX_PACKAGES:
        raise ProtocolError(f"at most {MAX_PACKAGES} packages per job")
    bad = [name for name in names if not is_package_name(name)]
    if bad:
        raise ProtocolError(f"not a Debian package name: {str(bad[0])[:60]!r}")
    if len(set(names)) != len(names):
        raise ProtocolError("a package is named twice")
