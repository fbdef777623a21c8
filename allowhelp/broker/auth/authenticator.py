"""Technician login: password check, server-side web sessions, CSRF tokens.

Kept apart from HTTP so the rules (uniform failure, new id at every login,
throttling before any password work, a TOTP code good once, audit before the
session exists, no typed name in the audit log that is not an account's)
are plain code the app only calls. The store is reached
through its worker threads (``store/worker.py``), never on the event loop; a
login whose web session cannot be stored after ``auth.login.ok`` is written
gets ``auth.login.aborted`` after it, and the caller ``StoreError`` (503).

A user name that names no account may be anything the person typed, a password
put in the wrong field included: ``auth.login.failed`` and
``auth.login.throttled`` then name ``UNKNOWN_NAME`` and carry a keyed fingerprint
of it (``name_fingerprint``), so repeated tries of one name can be told apart
from others without the name being kept. The throttle keys on the name in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.auth.passwords import (
    dummy_hash,
    hash_password,
    needs_rehash,
    verify_password,
)
from allowhelp.broker.auth.totp import (
    looks_like_recovery_code,
    matching_step,
    recovery_hash,
    remembered_steps,
)
from allowhelp.broker.errors import AuditUnavailable, AuthError, StoreError
from allowhelp.broker.model.throttle import LoginThrottle, ThrottlePolicy
from allowhelp.broker.store import Store, User, WebSession
from allowhelp.broker.store.worker import StoreWorker

log = logging.getLogger(__name__)

COOKIE_NAME = "__Host-allowhelp"
MAX_USERNAME = 64
MAX_PASSWORD = 1024
MAX_CODE = 64
REQUIRE_TOTP = "require_totp"  # policy name; "1" when every user must use TOTP
UNKNOWN_NAME = "(unknown)"  # the audit target of a name that is no account (never a user name)
FINGERPRINT_HEX = 12  # hex digits of a typed name's fingerprint kept in the audit log
_FINGERPRINT_LABEL = b"allowhelp login-name fingerprint v1"


class TotpRequired(AuthError):
    """The password was right and the account has TOTP: ask for the code."""

    code = "totp_required"


class TotpRejected(AuthError):
    """The password was right but the code was wrong or already used."""

    code = "invalid_totp"


class LoginThrottled(AuthError):
    """Too many failures for this name or address: wait ``retry_after`` seconds."""

    code = "throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after} s")
        self.retry_after = retry_after


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
    totp_enrolled: bool = False
    must_enrol_totp: bool = False  # TOTP is required for all and this user has none yet

    @property
    def actor(self) -> str:
        return f"{self.user.role}:{self.user.username}"

    def csrf_ok(self, header: str | None) -> bool:
        return (  # compare_digest raises on a str with a non-ASCII character
            header is not None
            and header.isascii()
            and hmac.compare_digest(header, self.session.csrf_token)
        )


@dataclass(frozen=True)
class _Named:
    """A login's typed user name as the audit log gets it."""

    target: str
    details: dict[str, object]


class WrongGuessUnrecorded(AuditUnavailable):
    """A wrong password or code whose ``auth.login.failed`` could not be written:
    503 like any audit outage, but the guess keeps its place in the throttle."""


def name_key_from(secret_file: Path) -> bytes:
    """The fingerprint key, derived from a secret file the broker keeps (its tunnel
    key): the same on every node sharing that key and after a restart, and unknown
    to a reader of the audit log, who cannot test guesses against a fingerprint."""
    return hmac.new(_FINGERPRINT_LABEL, secret_file.read_bytes(), hashlib.sha256).digest()


def name_fingerprint(key: bytes, name: str) -> str:
    """HMAC-SHA256 of the name as typed, its first ``FINGERPRINT_HEX`` hex digits."""
    typed = name.encode("utf-8", "surrogatepass")  # JSON may carry a lone surrogate
    return hmac.new(key, typed, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


def token_hash(cookie_value: str) -> str:
    """Only a hash of the cookie is stored: a stolen database opens no session."""
    return hashlib.sha256(cookie_value.encode()).hexdigest()


class Authenticator:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        session_hours: float,
        throttle: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.time,
        *,
        name_key: bytes | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._lifetime = session_hours * 3600
        self.throttle = LoginThrottle(throttle)
        self._clock = clock  # the wall time TOTP steps are taken from
        # None: a key of this process alone (fingerprints agree until it stops)
        self._name_key = name_key if name_key is not None else secrets.token_bytes(32)
        dummy_hash()  # made now, so the first unknown user costs no more than the next

    async def login(
        self, username: str, password: str, remote: str, code: str | None = None
    ) -> LoginResult:
        """Throttle, check the password, then the second factor; audit; open a session.

        Unknown user, disabled user and wrong password give one error after
        the same argon2 work, so the answer does not reveal which it was. A
        hash with older parameters (or an old scrypt one) is replaced once the
        login succeeds.
        """
        username = username[:MAX_USERNAME]
        await self._refuse_if_throttled(username, remote)
        try:
            return await self._checked_login(username, password, remote, code)
        except WrongGuessUnrecorded:
            raise  # a wrong guess stays counted, recorded or not
        except (StoreError, AuditUnavailable):
            # An outage is no guess: a user who keeps trying through it must not
            # find the account locked for 15 minutes once it is over.
            self.throttle.refund(username, remote)
            raise

    async def _checked_login(
        self, username: str, password: str, remote: str, code: str | None
    ) -> LoginResult:
        user = await self._db.read(Store.user_by_name, username)
        stored = user.password_hash if user is not None else dummy_hash()
        matches = await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], stored)
        if user is None or user.disabled or not matches:
            reason = "unknown user" if user is None else "disabled" if user.disabled else "password"
            await self._failed(self._named(username, known=user is not None), remote, reason)
            raise AuthError("wrong username or password")
        factor = await self._second_factor(user, remote, code)
        rehash = needs_rehash(user.password_hash)
        details: dict[str, object] = {"remote": remote, "second_factor": factor}
        if rehash:
            details["password_rehashed"] = True
        await self._audit.write(
            "auth.login.ok",
            actor=f"{user.role}:{user.username}",
            target=user.username,
            details=details,
        )
        self.throttle.succeeded(username, remote)
        cookie_value = secrets.token_urlsafe(32)
        now = time.time()
        session = WebSession(
            token_hash=token_hash(cookie_value),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            expires=now + self._lifetime,
        )
        try:
            await self._db.run(Store.add_web_session, session, remote)
        except StoreError:  # told 503: the chain must not end at "ok"
            await self._aborted(user, remote)
            raise
        if rehash:
            await self._rehash(user, password[:MAX_PASSWORD])
        return LoginResult(cookie_value, session.csrf_token, user, session.expires)

    async def _aborted(self, user: User, remote: str) -> None:
        """``auth.login.ok`` is written, but no web session could be made."""
        try:
            await self._audit.write(
                "auth.login.aborted",
                actor=f"{user.role}:{user.username}",
                target=user.username,
                details={"remote": remote, "reason": "store_unavailable"},
            )
        except AuditUnavailable:  # said by the writer already
            log.error("the aborted login of %s is not on the record", user.username)

    async def _rehash(self, user: User, password: str) -> None:
        """Store an argon2id hash with today's parameters in place of an older one."""
        fresh = await asyncio.to_thread(hash_password, password)
        try:
            replaced = await self._db.run(
                Store.replace_password_hash, user.id, user.password_hash, fresh
            )
        except StoreError as exc:  # the old hash still works; the next login tries again
            log.warning("password hash of %s not upgraded: %s", user.username, exc)
            return
        if replaced:
            log.info("password hash of %s upgraded to the current parameters", user.username)

    async def _refuse_if_throttled(self, username: str, remote: str) -> None:
        lock = self.throttle.attempt(username, remote)
        if lock is None:
            return
        if lock.first:  # one record per lock, not one per guess
            named = self._named(username, known=await self._is_account(username))
            await self._audit.write(
                "auth.login.throttled",
                actor=f"anonymous@{remote}",
                target=named.target,
                details={
                    "scope": lock.scope,
                    "remote": remote,
                    "retry_after": lock.retry_after,
                    **named.details,
                },
            )
        raise LoginThrottled(lock.retry_after)

    async def _is_account(self, username: str) -> bool:
        try:
            return await self._db.read(Store.user_by_name, username) is not None
        except StoreError:  # cannot tell: recorded as a name that is no account
            return False

    def _named(self, username: str, *, known: bool) -> _Named:
        """How a typed user name is put on the record: as typed when it is an account's,
        else ``UNKNOWN_NAME`` and the name's fingerprint."""
        if known:
            return _Named(username, {})
        fingerprint = name_fingerprint(self._name_key, username)
        return _Named(UNKNOWN_NAME, {"name_fingerprint": fingerprint})

    async def _failed(self, named: _Named, remote: str, reason: str) -> None:
        """The attempt stays counted by the throttle; say so in the audit log."""
        try:
            await self._audit.write(
                "auth.login.failed",
                actor=f"anonymous@{remote}",
                target=named.target,
                details={"reason": reason, "remote": remote, **named.details},
            )
        except AuditUnavailable as exc:
            raise WrongGuessUnrecorded(str(exc)) from exc

    async def _second_factor(self, user: User, remote: str, code: str | None) -> str:
        """How the user proved it: none, totp or recovery; raises when a needed code fails."""
        secret = (await self._db.read(Store.totp, user.id)).secret
        if secret is None:
            return "none"
        if not code:
            self.throttle.refund(user.username, remote)  # a right password is no failure
            raise TotpRequired("enter the 6-digit code from your authenticator app")
        code = code.strip()[:MAX_CODE]
        if looks_like_recovery_code(code):
            if await self._db.run(Store.use_recovery_code, user.id, recovery_hash(code)):
                return "recovery"
            reason = "recovery code"
        else:
            now = self._clock()
            step = matching_step(secret, code, now)
            if step is not None and await self._db.run(
                Store.use_totp_step, user.id, step, remembered_steps(now)
            ):
                return "totp"
            reason = "totp" if step is None else "totp reused"
        await self._failed(self._named(user.username, known=True), remote, reason)
        raise TotpRejected("wrong or already used code")

    async def principal(self, cookie_value: str | None) -> Principal | None:
        """Who holds this cookie (a query on the store's reader: not held up by a
        write waiting for the database's lock); ``StoreError`` when it cannot tell."""
        if not cookie_value or len(cookie_value) > 100:
            return None
        owner = await self._db.read(Store.session_owner, token_hash(cookie_value), REQUIRE_TOTP)
        if owner is None:  # no such live session, or its user is disabled
            return None
        required = owner.policy_value == "1"
        return Principal(
            owner.user, owner.session, owner.totp_enrolled, required and not owner.totp_enrolled
        )

    async def logout(self, principal: Principal, remote: str) -> None:
        await self._audit.write(
            "auth.logout",
            actor=principal.actor,
            target=principal.user.username,
            details={"remote": remote},
        )
        await self._db.run(Store.delete_web_session, principal.session.token_hash)
