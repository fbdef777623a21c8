"""Technician login: password check, server-side web sessions, CSRF tokens.

Kept apart from HTTP so the rules (uniform failure, new id at every login,
audit before the session exists) are plain code the app only calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from .audit import AuditLog
from .errors import AuthError
from .passwords import dummy_hash, verify_password
from .store import Store, User, WebSession

log = logging.getLogger(__name__)

COOKIE_NAME = "__Host-allowhelp"
MAX_USERNAME = 64
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class LoginResult:
    cookie_value: str
    csrf_token: str
    user: User
    expires: float


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user and the web session their cookie names."""

    user: User
    session: WebSession

    @property
    def actor(self) -> str:
        return f"{self.user.role}:{self.user.username}"

    def csrf_ok(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header, self.session.csrf_token)


def token_hash(cookie_value: str) -> str:
    """Only a hash of the cookie is stored: a stolen database opens no session."""
    return hashlib.sha256(cookie_value.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store, audit: AuditLog, session_hours: float) -> None:
        self._store = store
        self._audit = audit
        self._lifetime = session_hours * 3600

    async def login(self, username: str, password: str, remote: str) -> LoginResult:
        """Check the password, audit the outcome, then (and only then) open a session.

        Unknown user, disabled user and wrong password give one error after
        the same scrypt work, so the answer does not reveal which it was.
        """
        username = username[:MAX_USERNAME]
        user = self._store.user_by_name(username)
        stored = user.password_hash if user is not None else dummy_hash()
        matches = await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], stored)
        if user is None or user.disabled or not matches:
            reason = "unknown user" if user is None else "disabled" if user.disabled else "password"
            await self._audit.write(
                "auth.login.failed",
                actor=f"anonymous@{remote}",
                target=username,
                details={"reason": reason, "remote": remote},
            )
            raise AuthError("wrong username or password")
        await self._audit.write(
            "auth.login.ok",
            actor=f"{user.role}:{user.username}",
            target=user.username,
            details={"remote": remote},
        )
        cookie_value = secrets.token_urlsafe(32)
        now = time.time()
        session = WebSession(
            token_hash=token_hash(cookie_value),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            expires=now + self._lifetime,
        )
        self._store.add_web_session(session, remote)
        return LoginResult(cookie_value, session.csrf_token, user, session.expires)

    def principal(self, cookie_value: str | None) -> Principal | None:
        if not cookie_value or len(cookie_value) > 100:
            return None
        session = self._store.web_session(token_hash(cookie_value))
        if session is None:
            return None
        user = self._store.user_by_id(session.user_id)
        if user is None or user.disabled:
            return None
        return Principal(user, session)

    async def logout(self, principal: Principal, remote: str) -> None:
        await self._audit.write(
            "auth.logout",
            actor=principal.actor,
            target=principal.user.username,
            details={"remote": remote},
        )
        self._store.delete_web_session(principal.session.token_hash)
