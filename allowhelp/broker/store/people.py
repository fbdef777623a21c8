"""Users, their web sessions, TOTP and the login policy."""

from __future__ import annotations

import sqlite3
import time

from ..errors import StoreError
from .core import StoreCore
from .records import Role, TotpState, User, UserSummary, WebSession, user_from_row


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
