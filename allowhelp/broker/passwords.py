"""Password hashing with scrypt from the standard library.

scrypt is memory-hard like argon2id and needs no extra dependency. The cost
parameters travel inside each hash, so they can be raised later without
invalidating stored passwords.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def check_new_password(password: str) -> None:
    """Refuse passwords a help desk should not protect remote shells with."""
    if not password.strip():
        raise ValueError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Compare in constant time; a malformed stored hash simply never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(
            password[:MAX_PASSWORD_LENGTH], base64.b64decode(salt), *map(int, (n, r, p))
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


@functools.cache
def dummy_hash() -> str:
    """Checked when the username is unknown, so that an unknown user costs the
    same time as a wrong password and the two answers cannot be told apart."""
    return hash_password(secrets.token_urlsafe(24))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
