"""Time-based one-time passwords (RFC 6238, HMAC-SHA1, 6 digits, 30 s) and recovery codes.

Pure functions: the store remembers every time step a user has used (not only
the highest), so a code is good once (:meth:`Store.use_totp_step` claims a step
atomically) and a clock set back after running ahead refuses nothing that is
fresh. Only steps near the present are remembered (:func:`remembered_steps`).
Recovery codes are kept only as hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

from allowhelp.protocol.text import ascii_digits

DIGITS = 6
PERIOD = 30
SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends for HMAC-SHA1
DRIFT_STEPS = 1  # accept the step before and after: phones' clocks drift
# Used steps further than this from now are forgotten: their codes could only
# come back if the broker's clock jumped by more than a day.
REMEMBER_STEPS = 24 * 3600 // PERIOD
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def new_secret() -> str:
    """A fresh seed in base32 without padding, as authenticator apps expect."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 dynamic truncation of HMAC(key, counter)."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(when: float) -> int:
    return int(when // PERIOD)


def code_at(secret: str, when: float) -> str:
    return hotp(_key(secret), step_at(when))


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code this is (within the drift window), else None.

    The caller must still claim the step, so that the same code cannot be used
    twice; every candidate is compared in constant time.
    """
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not ascii_digits(code):
        return None
    key = _key(secret)
    current = step_at(time.time() if now is None else now)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(hotp(key, step), code) and found is None:
            found = step
    return found


def remembered_steps(now: float) -> range:
    """The used steps worth keeping at ``now``: the accepted window, a day either side."""
    current = step_at(now)
    reach = DRIFT_STEPS + REMEMBER_STEPS
    return range(current - reach, current + reach + 1)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI the QR code carries (Google Authenticator key URI format)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": PERIOD,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Codes like ``k7tq-m3xa-9p``: 50 random bits each, easy to read aloud."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


def normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def recovery_hash(code: str) -> str:
    """High-entropy codes: a plain SHA-256 is enough (no dictionary to attack)."""
    return hashlib.sha256(normalise_recovery_code(code).encode()).hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    return len(normalise_recovery_code(code)) == 10 and not code.strip().isdigit()
