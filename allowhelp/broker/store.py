"""The broker's SQLite store: users, web sessions, enrolment tokens, agents.

One file in the data folder, WAL mode, schema versions applied in order at open.
The audit log lives in its own file (see ``audit``) so a full audit disk refuses
actions without corrupting this one, and this one can be restored from backup
without touching the evidence.

Every sqlite3 error is translated into ``StoreError`` here, so no library error
travels further up.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import StoreError
from .session import Session, State

Role = Literal["admin", "technician"]
ROLES: tuple[Role, ...] = ("admin", "technician")

# Each entry moves the schema from version N to N+1. Never edit a shipped entry:
# append a new one, because installed brokers have already run the old ones.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        full_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'technician')),
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        remote TEXT NOT NULL
    );
    CREATE TABLE enrol_tokens (
        secret_hash TEXT PRIMARY KEY,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        uses_left INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        hostname TEXT NOT NULL,
        os TEXT NOT NULL,
        username TEXT NOT NULL,
        version TEXT NOT NULL,
        enrolled REAL NOT NULL,
        last_seen REAL,
        removed INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        technician TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('shell', 'screen')),
        reason TEXT NOT NULL,
        phrase TEXT NOT NULL,
        state TEXT NOT NULL,
        view_only INTEGER NOT NULL DEFAULT 0,
        help_code TEXT,
        created REAL NOT NULL,
        decided REAL,
        started REAL,
        ended REAL,
        end_reason TEXT,
        bytes_to_agent INTEGER NOT NULL DEFAULT 0,
        bytes_from_agent INTEGER NOT NULL DEFAULT 0,
        recording TEXT,
        recording_sha256 TEXT
    );
    CREATE INDEX sessions_by_technician ON sessions (technician, created);
    CREATE TABLE help_requests (
        code TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        message TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        session_id TEXT
    );
    """,
    """
    ALTER TABLE users ADD COLUMN totp_secret TEXT;
    ALTER TABLE users ADD COLUMN totp_pending TEXT;
    ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE recovery_codes (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        PRIMARY KEY (user_id, code_hash)
    );
    ALTER TABLE enrol_tokens ADD COLUMN revoked REAL;
    CREATE TABLE policy (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)


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


class Store:
    """Typed access to the broker database; callers never see SQL or sqlite3."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(conn, path)
            store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the broker database {path}: {exc}") from exc
        path.chmod(0o600)
        return store

    def close(self) -> None:
        self._conn.close()

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database {self.path} has schema version {version}, newer than this "
                f"allowhelp ({len(MIGRATIONS)}): upgrade allowhelp"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._conn.executescript(
                f"BEGIN IMMEDIATE;{script};PRAGMA user_version={number};COMMIT;"
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._conn.execute(sql, args))
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    # users

    def add_user(self, username: str, full_name: str, role: Role, password_hash: str) -> User:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO users (username, full_name, role, password_hash, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (username, full_name, role, password_hash, time.time()),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise StoreError(f"a user named {username!r} already exists") from exc
            raise
        user = self.user_by_name(username)
        if user is None:
            raise StoreError(f"user {username!r} vanished right after it was created")
        return user

    def set_password(self, username: str, password_hash: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
            )
            return cur.rowcount == 1

    def user_by_name(self, username: str) -> User | None:
        rows = self._query("SELECT * FROM users WHERE username = ?", (username,))
        return _user(rows[0]) if rows else None

    def user_by_id(self, user_id: int) -> User | None:
        rows = self._query("SELECT * FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    def count_users(self) -> int:
        return int(self._query("SELECT count(*) FROM users")[0][0])

    # web sessions

    def add_web_session(self, session: WebSession, remote: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE expires < ?", (time.time(),))
            db.execute(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created, expires,"
                " remote) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session.token_hash,
                    session.user_id,
                    session.csrf_token,
                    session.created,
                    session.expires,
                    remote,
                ),
            )

    def web_session(self, token_hash: str) -> WebSession | None:
        rows = self._query(
            "SELECT token_hash, user_id, csrf_token, created, expires FROM web_sessions"
            " WHERE token_hash = ? AND expires >= ?",
            (token_hash, time.time()),
        )
        if not rows:
            return None
        row = rows[0]
        return WebSession(
            row["token_hash"], row["user_id"], row["csrf_token"], row["created"], row["expires"]
        )

    def delete_web_session(self, token_hash: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

    # enrolment tokens

    def add_enrol_token(self, secret_hash: str, expires: float, uses: int, created_by: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO enrol_tokens (secret_hash, created, expires, uses_left, created_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (secret_hash, time.time(), expires, uses, created_by),
            )

    def consume_enrol_token(self, secret_hash: str, now: float) -> str | None:
        """Use one use of a token atomically; ``None`` when it is usable, else why not.

        Checking and decrementing in one transaction is what makes a
        single-use token single-use even when two agents race with it.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT expires, uses_left FROM enrol_tokens WHERE secret_hash = ?",
                (secret_hash,),
            ).fetchone()
            if row is None:
                return "unknown"
            if row["uses_left"] <= 0:
                return "used"
            if row["expires"] < now:
                return "expired"
            db.execute(
                "UPDATE enrol_tokens SET uses_left = uses_left - 1 WHERE secret_hash = ?",
                (secret_hash,),
            )
            return None

    # agents

    def upsert_agent(self, agent: AgentRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO agents (id, public_key, hostname, os, username, version, enrolled,"
                " last_seen, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT(id) DO UPDATE SET hostname = excluded.hostname,"
                " os = excluded.os, username = excluded.username, version = excluded.version,"
                " enrolled = excluded.enrolled, removed = 0",
                (
                    agent.id,
                    agent.public_key,
                    agent.hostname,
                    agent.os,
                    agent.username,
                    agent.version,
                    agent.enrolled,
                    agent.last_seen,
                ),
            )

    def agent(self, agent_id: str) -> AgentRecord | None:
        rows = self._query("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return _agent(rows[0]) if rows else None

    def agent_by_key(self, public_key: str) -> AgentRecord | None:
        rows = self._query("SELECT * FROM agents WHERE public_key = ?", (public_key,))
        return _agent(rows[0]) if rows else None

    def agents(self) -> list[AgentRecord]:
        return [_agent(r) for r in self._query("SELECT * FROM agents WHERE removed = 0")]

    def update_agent_info(
        self, agent_id: str, hostname: str, os: str, user: str, version: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE agents SET hostname = ?, os = ?, username = ?, version = ? WHERE id = ?",
                (hostname, os, user, version, agent_id),
            )

    def touch_agent(self, agent_id: str, when: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (when, agent_id))

    # console administration: user list, TOTP, token list, agent removal, policy

    def users(self) -> list[UserSummary]:
        rows = self._query(
            "SELECT username, full_name, role, disabled, created,"
            " totp_secret IS NOT NULL AS totp FROM users ORDER BY username"
        )
        return [
            UserSummary(
                r["username"],
                r["full_name"],
                r["role"],
                bool(r["disabled"]),
                bool(r["totp"]),
                r["created"],
            )
            for r in rows
        ]

    def update_user(
        self, username: str, *, disabled: bool | None = None, role: Role | None = None
    ) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET disabled = coalesce(?, disabled), role = coalesce(?, role)"
                " WHERE username = ?",
                (None if disabled is None else int(disabled), role, username),
            )
            return cur.rowcount == 1

    def count_active_admins(self) -> int:
        rows = self._query("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0")
        return int(rows[0][0])

    def drop_web_sessions(self, user_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))

    def totp(self, user_id: int) -> TotpState:
        rows = self._query(
            "SELECT totp_secret, totp_pending, totp_last_step FROM users WHERE id = ?", (user_id,)
        )
        if not rows:
            return TotpState(None, None, 0)
        row = rows[0]
        return TotpState(row["totp_secret"], row["totp_pending"], row["totp_last_step"])

    def set_totp_pending(self, user_id: int, secret: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET totp_pending = ? WHERE id = ?", (secret, user_id))

    def activate_totp(self, user_id: int, secret: str, step: int, codes: list[str]) -> bool:
        """Make the pending secret the active one, with fresh recovery code hashes."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL,"
                " totp_last_step = ? WHERE id = ? AND totp_pending = ? AND totp_secret IS NULL",
                (step, user_id, secret),
            )
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
            db.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                [(user_id, code) for code in codes],
            )
            return True

    def use_totp_step(self, user_id: int, step: int) -> bool:
        """Claim a time step; false when it (or a later one) was used already."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
                (step, user_id, step),
            )
            return cur.rowcount == 1

    def use_recovery_code(self, user_id: int, code_hash: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM recovery_codes WHERE user_id = ? AND code_hash = ?",
                (user_id, code_hash),
            )
            return cur.rowcount == 1

    def recovery_codes_left(self, user_id: int) -> int:
        rows = self._query("SELECT count(*) FROM recovery_codes WHERE user_id = ?", (user_id,))
        return int(rows[0][0])

    def reset_totp(self, user_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = 0"
                " WHERE id = ?",
                (user_id,),
            )
            db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))

    def enrol_tokens(self) -> list[TokenSummary]:
        rows = self._query("SELECT * FROM enrol_tokens ORDER BY created DESC")
        return [
            TokenSummary(
                r["secret_hash"][:12],
                r["created"],
                r["expires"],
                r["uses_left"],
                r["created_by"],
                r["revoked"],
            )
            for r in rows
        ]

    def revoke_enrol_token(self, token_id: str, now: float) -> bool:
        """Revoked tokens also expire, so enrolment refuses them like any stale token."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET revoked = ?, expires = min(expires, ?)"
                " WHERE substr(secret_hash, 1, 12) = ? AND revoked IS NULL",
                (now, now - 1, token_id),
            )
            return cur.rowcount >= 1

    def remove_agent(self, agent_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE agents SET removed = 1 WHERE id = ? AND removed = 0", (agent_id,)
            )
            return cur.rowcount == 1

    def policy(self, name: str) -> str | None:
        rows = self._query("SELECT value FROM policy WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_policy(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO policy (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # sessions

    def save_session(self, session: Session) -> None:
        values = session_row(session)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "id")
        with self._tx() as db:
            db.execute(
                f"INSERT INTO sessions ({columns}) VALUES ({marks})"  # noqa: S608 - fixed names
                f" ON CONFLICT(id) DO UPDATE SET {updates}",
                tuple(values.values()),
            )

    def session(self, session_id: str) -> Session | None:
        rows = self._query(SESSION_SELECT + " WHERE s.id = ?", (session_id,))
        return row_session(rows[0]) if rows else None

    def sessions(self, technician: str | None, limit: int) -> list[Session]:
        if technician is None:
            rows = self._query(SESSION_SELECT + " ORDER BY s.created DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                SESSION_SELECT + " WHERE s.technician = ? ORDER BY s.created DESC LIMIT ?",
                (technician, limit),
            )
        return [row_session(r) for r in rows]

    def open_sessions(self) -> list[Session]:
        rows = self._query(
            SESSION_SELECT + " WHERE s.state IN ('requested', 'awaiting_consent', 'active')"
        )
        return [row_session(r) for r in rows]

    # help requests

    def add_help_request(self, ticket: HelpTicket) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO help_requests (code, agent_id, message, created, expires,"
                " session_id) VALUES (?, ?, ?, ?, ?, NULL)",
                (ticket.code, ticket.agent_id, ticket.message, ticket.created, ticket.expires),
            )

    def help_request(self, code: str) -> HelpTicket | None:
        rows = self._query(HELP_SELECT + " WHERE h.code = ?", (code,))
        return row_ticket(rows[0]) if rows else None

    def help_requests(self, now: float) -> list[HelpTicket]:
        rows = self._query(
            HELP_SELECT + " WHERE h.expires >= ? AND h.session_id IS NULL ORDER BY h.created",
            (now,),
        )
        return [row_ticket(r) for r in rows]

    def use_help_request(self, code: str, session_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE help_requests SET session_id = ? WHERE code = ?", (session_id, code))


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        full_name=row["full_name"],
        role=row["role"],
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
    )


def _agent(row: sqlite3.Row) -> AgentRecord:
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
)


def session_row(session: Session) -> dict[str, object]:
    values = {name: getattr(session, name) for name in SESSION_COLUMNS}
    values["state"] = session.state.value
    values["view_only"] = int(session.view_only)
    return values


def row_session(row: sqlite3.Row) -> Session:
    values = {name: row[name] for name in SESSION_COLUMNS}
    values["state"] = State(values["state"])
    values["view_only"] = bool(values["view_only"])
    values["help_code"] = values["help_code"] or ""
    return Session(hostname=row["hostname"], technician_name=row["technician_name"], **values)


def row_ticket(row: sqlite3.Row) -> HelpTicket:
    return HelpTicket(
        code=row["code"],
        agent_id=row["agent_id"],
        hostname=row["hostname"],
        message=row["message"],
        created=row["created"],
        expires=row["expires"],
        session_id=row["session_id"],
    )
