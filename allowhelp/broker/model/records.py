"""What the store hands out: frozen records, and their mapping to and from rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from allowhelp.broker.model.database import Row
from allowhelp.broker.model.session import Session, State

Role = Literal["admin", "technician"]
ROLES: tuple[Role, ...] = ("admin", "technician")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    full_name: str
    role: Role
    password_hash: str
    disabled: bool


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    user_id: int
    csrf_token: str
    created: float
    expires: float


@dataclass(frozen=True)
class AgentRecord:
    id: str
    public_key: str
    hostname: str
    os: str
    username: str
    version: str
    enrolled: float
    last_seen: float | None
    removed: bool


@dataclass(frozen=True)
class HelpTicket:
    code: str
    agent_id: str
    hostname: str
    message: str
    created: float
    expires: float
    session_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "message": self.message,
            "created": self.created,
            "expires": self.expires,
            "session_id": self.session_id,
        }


def user_from_row(row: Row) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        full_name=row["full_name"],
        role=row["role"],
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
    )


def agent_from_row(row: Row) -> AgentRecord:
    return AgentRecord(
        id=row["id"],
        public_key=row["public_key"],
        hostname=row["hostname"],
        os=row["os"],
        username=row["username"],
        version=row["version"],
        enrolled=row["enrolled"],
        last_seen=row["last_seen"],
        removed=bool(row["removed"]),
    )


@dataclass(frozen=True)
class UserSummary:
    username: str
    full_name: str
    role: Role
    disabled: bool
    totp: bool
    created: float


@dataclass(frozen=True)
class TotpState:
    secret: str | None  # the active seed; None when not enrolled
    pending: str | None  # a seed shown to the user, not yet confirmed with a code
    last_step: int  # the last time step accepted: a code is good once


@dataclass(frozen=True)
class TokenSummary:
    id: str  # the first 12 hex digits of the secret's hash, as in the audit log
    created: float
    expires: float
    uses_left: int
    created_by: str
    revoked: float | None


SESSION_SELECT = (
    "SELECT s.*, coalesce(a.hostname, '?') AS hostname,"
    " coalesce(u.full_name, s.technician) AS technician_name"
    " FROM sessions s LEFT JOIN agents a ON a.id = s.agent_id"
    " LEFT JOIN users u ON u.username = s.technician"
)
HELP_SELECT = (
    "SELECT h.*, coalesce(a.hostname, '?') AS hostname FROM help_requests h"
    " LEFT JOIN agents a ON a.id = h.agent_id"
)
SESSION_COLUMNS = (
    "id",
    "agent_id",
    "technician",
    "kind",
    "reason",
    "phrase",
    "state",
    "view_only",
    "help_code",
    "created",
    "decided",
    "started",
    "ended",
    "end_reason",
    "bytes_to_agent",
    "bytes_from_agent",
    "recording",
    "recording_sha256",
    "ticket",
    "notes",
)


def session_row(session: Session) -> dict[str, object]:
    values = {name: getattr(session, name) for name in SESSION_COLUMNS}
    values["state"] = session.state.value
    values["view_only"] = int(session.view_only)
    return values


def row_session(row: Row) -> Session:
    values = {name: row[name] for name in SESSION_COLUMNS}
    values["state"] = State(values["state"])
    values["view_only"] = bool(values["view_only"])
    values["help_code"] = values["help_code"] or ""
    return Session(hostname=row["hostname"], technician_name=row["technician_name"], **values)


def row_ticket(row: Row) -> HelpTicket:
    return HelpTicket(
        code=row["code"],
        agent_id=row["agent_id"],
        hostname=row["hostname"],
        message=row["message"],
        created=row["created"],
        expires=row["expires"],
        session_id=row["session_id"],
    )
