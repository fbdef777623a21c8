"""Password hashing: argon2id (argon2-cffi); scrypt hashes from before still verify.

New hashes use argon2-cffi's default profile, RFC 9106's "second recommended
option" for memory-constrained hosts: argon2id, t=3, m=64 MiB, p=4, 16-byte
salt, 32-byte tag. That is above OWASP's argon2id minimums (m=19 MiB t=2 p=1,
or m=46 MiB t=1 p=1) and takes about 0.2 s on one core. The parameters travel
inside each PHC string (``$argon2id$v=19$m=65536,t=3,p=4$salt$tag``), so they
can be raised later: :func:`needs_rehash` tells the login to store a fresh
hash once it has checked the password.

Hashes written before argon2 look like ``scrypt$N$r$p$salt$digest`` (base64
salt and digest, N=2^15 r=8 p=1): they keep working and always need a rehash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
HASHER = PasswordHasher()  # argon2-cffi's defaults: profiles.RFC_9106_LOW_MEMORY
ARGON2_PREFIX = "$argon2"
SCRYPT_PREFIX = "scrypt$"
_SCRYPT_DKLEN = 32
_SCRYPT_MAXMEM = 256 * 1024 * 1024  # old hashes were N=2^15 r=8 (32 MiB); room for more


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
    """A new argon2id hash with the current parameters (slow on purpose: off the loop)."""
    return HASHER.hash(password[:MAX_PASSWORD_LENGTH])


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against an argon2 or an old scrypt hash in constant time.

    A malformed or unknown stored hash simply never matches.
    """
    password = password[:MAX_PASSWORD_LENGTH]
    if stored.startswith(ARGON2_PREFIX):
        try:
            return HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    if stored.startswith(SCRYPT_PREFIX):
        return _verify_scrypt(password, stored)
    return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` is not an argon2id hash with the current parameters."""
    if not stored.startswith(ARGON2_PREFIX):
        return True
    try:
        return HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@functools.cache
def dummy_hash() -> str:
    """Checked when the username is unknown, so that an unknown user costs the
    same argon2 work as a wrong password and the two answers cannot be told apart."""
    return hash_password(secrets.token_urlsafe(24))


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=_SCRYPT_DKLEN,
        )
    except (ValueError, OverflowError, TypeError):  # a malformed or absurd old hash
        return False
    return len(expected) == _SCRYPT_DKLEN and hmac.compare_digest(expected, actual)
