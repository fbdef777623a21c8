"""Users, their web sessions, TOTP and the login policy."""

from __future__ import annotations

import time
from dataclasses import dataclass

from allowhelp.broker.errors import Conflict, StoreError
from allowhelp.broker.model.records import (
    Role,
    TotpState,
    User,
    UserSummary,
    WebSession,
    user_from_row,
)
from allowhelp.broker.store.core import StoreCore
from allowhelp.broker.store.database import DuplicateRow

_OWNER_SELECT = (
    "SELECT u.*, s.csrf_token, s.created AS session_created, s.expires AS session_expires,"
    " u.totp_secret IS NOT NULL AS totp_enrolled,"
    " (SELECT value FROM policy WHERE name = ?) AS policy_value"
    " FROM web_sessions s JOIN users u ON u.id = s.user_id"
    " WHERE s.token_hash = ? AND s.expires >= ? AND u.disabled = 0"
)


@dataclass(frozen=True)
class SessionOwner:
    """A live web session, its enabled user, and what the login rules need to know."""

    user: User
    session: WebSession
    totp_enrolled: bool
    policy_value: str | None  # the value of the policy asked for, None when unset


class PeopleStore(StoreCore):
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
            if isinstance(exc, DuplicateRow):
                raise Conflict(f"a user named {username!r} already exists", code="exists") from exc
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

    def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        """Store a rehash, unless the password changed meanwhile (then keep the new one)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (new_hash, user_id, old_hash),
            )
            return cur.rowcount == 1

    def user_by_name(self, username: str) -> User | None:
        rows = self._query("SELECT * FROM users WHERE username = ?", (username,))
        return user_from_row(rows[0]) if rows else None

    def user_by_id(self, user_id: int) -> User | None:
        rows = self._query("SELECT * FROM users WHERE id = ?", (user_id,))
        return user_from_row(rows[0]) if rows else None

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

    def session_owner(self, token_hash: str, policy: str) -> SessionOwner | None:
        """In one query: the live session, its user if enabled, TOTP and one policy."""
        rows = self._query(_OWNER_SELECT, (policy, token_hash, time.time()))
        if not rows:
            return None
        row = rows[0]
        session = WebSession(
            token_hash, row["id"], row["csrf_token"], row["session_created"], row["session_expires"]
        )
        policy_value = row["policy_value"]
        return SessionOwner(
            user_from_row(row),
            session,
            bool(row["totp_enrolled"]),
            None if policy_value is None else str(policy_value),
        )

    def delete_web_session(self, token_hash: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

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
            "SELECT totp_secret, totp_pending, (SELECT coalesce(max(step), 0)"
            " FROM totp_used_steps WHERE user_id = users.id) AS last_step"
            " FROM users WHERE id = ?",
            (user_id,),
        )
        if not rows:
            return TotpState(None, None, 0)
        row = rows[0]
        return TotpState(row["totp_secret"], row["totp_pending"], row["last_step"])

    def set_totp_pending(self, user_id: int, secret: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET totp_pending = ? WHERE id = ?", (secret, user_id))

    def activate_totp(self, user_id: int, secret: str, step: int, codes: list[str]) -> bool:
        """Make the pending secret the active one, with fresh recovery code hashes.

        ``step`` (the confirming code's) is used up: that code cannot log in.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL"
                " WHERE id = ? AND totp_pending = ? AND totp_secret IS NULL",
                (user_id, secret),
            )
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM totp_used_steps WHERE user_id = ?", (user_id,))
            db.execute("INSERT INTO totp_used_steps (user_id, step) VALUES (?, ?)", (user_id, step))
            db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
            db.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                [(user_id, code) for code in codes],
            )
            return True

    def use_totp_step(self, user_id: int, step: int, keep: range) -> bool:
        """Claim a time step; false when this very step was used already.

        Used steps outside ``keep`` (far from now: their codes cannot be
        accepted) are forgotten in the same transaction, so the set stays small.
        """
        with self._tx() as db:
            db.execute(
                "DELETE FROM totp_used_steps WHERE user_id = ? AND (step < ? OR step >= ?)",
                (user_id, keep.start, keep.stop),
            )
            cur = db.execute(
                "INSERT INTO totp_used_steps (user_id, step) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (user_id, step),
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
                "UPDATE users SET totp_secret = NULL, totp_pending = NULL WHERE id = ?",
                (user_id,),
            )
            db.execute("DELETE FROM totp_used_steps WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))

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
