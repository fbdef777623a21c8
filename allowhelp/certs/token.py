"""The enrolment token: one string a technician pastes on a PC to enrol it.

It carries everything the agent needs to reach and trust the broker before it
trusts anything else: the broker's URL, the CA fingerprint to pin, and a one-time
secret. People copy it through chat, e-mail and phone dictation, so it must
survive stray whitespace and must refuse, with a clear reason, any damage.

Layout (before base64url, no padding)::

    ca fingerprint (32 bytes) | secret length (1 byte) | secret (ASCII) | url (UTF-8) | CRC-32

The check is CRC-32 rather than truncated SHA-256 because a CRC detects every
error burst up to 32 bits for certain: one changed base64 character alters at
most 6 bits within 16 consecutive ones, so any single typo is always caught, not
just caught with high probability. The check is against accidents only; the
token's authority comes from the secret, and whoever can alter the token can
rewrite all of it anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from allowhelp.certs.errors import TokenError

__all__ = ["EnrolmentToken", "secret_hash"]

PREFIX = "ah1_"
_CHECK_LEN = 4
_FP_LEN = 32
_MIN_SECRET_CHARS = 43  # secrets.token_urlsafe(32): 32 random bytes
_MAX_SECRET_CHARS = 255  # its length travels in one byte
_MAX_URL_CHARS = 512
_MAX_TOKEN_CHARS = 4096  # above the longest valid token (URL and secret at their caps)
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_SECRET = re.compile(r"[A-Za-z0-9_-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_OTHER_VERSION = re.compile(r"ah[0-9]+_.*")
_WHITESPACE = re.compile(r"\s+")

NOT_OURS = "this is not an allowhelp enrolment token"
NEWER_VERSION = "this enrolment token was made by a newer allowhelp: update the agent"
DAMAGED = "enrolment token is damaged (checksum mismatch): copy it again"
MALFORMED = "enrolment token is malformed"


@dataclass(frozen=True)
class EnrolmentToken:
    """What an agent needs to enrol; invalid values are refused at construction."""

    url: str
    secret: str = field(repr=False)  # never in logs or tracebacks
    ca_fingerprint: str

    def __post_init__(self) -> None:
        _check_url(self.url)
        _check_secret(self.secret)
        if not isinstance(self.ca_fingerprint, str) or not _HEX64.fullmatch(self.ca_fingerprint):
            raise ValueError("CA fingerprint must be 64 lowercase hex digits (SHA-256)")

    def encode(self) -> str:
        """The string to hand out; decoding it gives back an equal token."""
        payload = (
            bytes.fromhex(self.ca_fingerprint)
            + bytes([len(self.secret)])
            + self.secret.encode("ascii")
            + self.url.encode("utf-8")
        )
        body = payload + _checksum(payload)
        return PREFIX + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> EnrolmentToken:
        """Parse a pasted token; every refusal is a ``TokenError`` with a one-line reason."""
        payload = _unwrap(text)
        if len(payload) < _FP_LEN + 1:
            raise TokenError(MALFORMED)
        fingerprint, secret_len = payload[:_FP_LEN], payload[_FP_LEN]
        rest = payload[_FP_LEN + 1 :]
        if len(rest) <= secret_len:
            raise TokenError(MALFORMED)
        try:
            secret = rest[:secret_len].decode("ascii")
            url = rest[secret_len:].decode("utf-8")
            return cls(url=url, secret=secret, ca_fingerprint=fingerprint.hex())
        except ValueError as exc:  # UnicodeDecodeError, or a field refused by __post_init__
            raise TokenError(f"{MALFORMED} ({_one_line(exc)})") from None

    @classmethod
    def new(cls, url: str, ca_fingerprint: str) -> EnrolmentToken:
        """A token with a fresh secret; tolerant of a trailing '/' and 'AB:CD:..' fingerprints."""
        return cls(
            url=_normalise_url(url),
            secret=secrets.token_urlsafe(32),
            ca_fingerprint=ca_fingerprint.strip().replace(":", "").lower(),
        )


def secret_hash(secret: str) -> str:
    """What the broker stores, so a copy of its database cannot enrol anything."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _checksum(payload: bytes) -> bytes:
    # Little-endian after the data keeps the CRC's burst guarantee across the boundary.
    return zlib.crc32(PREFIX.encode("ascii") + payload).to_bytes(_CHECK_LEN, "little")


def _unwrap(text: str) -> bytes:
    """The payload inside a pasted token, once its checksum has been verified."""
    body = _decode_body(_strip_prefix(text))
    payload, check = body[:-_CHECK_LEN], body[-_CHECK_LEN:]
    if _checksum(payload) != check:
        raise TokenError(DAMAGED)
    return payload


def _strip_prefix(text: str) -> str:
    """Drop whitespace anywhere (chat and mail wrap long lines), then the prefix."""
    if not isinstance(text, str):
        raise TokenError(NOT_OURS)
    compact = _WHITESPACE.sub("", text)
    if not compact.startswith(PREFIX):
        raise TokenError(NEWER_VERSION if _OTHER_VERSION.fullmatch(compact) else NOT_OURS)
    return compact[len(PREFIX) :]


def _decode_body(encoded: str) -> bytes:
    """Decode base64url, insisting on the canonical text.

    A changed last character can differ only in bits the decoder ignores, so
    comparing with the re-encoded text is what makes that typo visible too.
    """
    if len(encoded) > _MAX_TOKEN_CHARS or len(encoded) % 4 == 1:
        raise TokenError(MALFORMED)
    if not _B64URL.fullmatch(encoded):
        raise TokenError(MALFORMED)
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(MALFORMED) from None
    if len(body) <= _CHECK_LEN:
        raise TokenError(MALFORMED)
    if base64.urlsafe_b64encode(body).decode("ascii").rstrip("=") != encoded:
        raise TokenError(DAMAGED)
    return body


def _normalise_url(url: str) -> str:
    """Forgive what people type: 'HTTPS://' and a trailing '/' mean the same origin."""
    text = url.strip()
    scheme = "https://"
    if text[: len(scheme)].lower() == scheme:
        text = scheme + text[len(scheme) :]
    if text.endswith("/") and text.count("/") == 3:
        text = text[:-1]
    return text


def _check_url(url: str) -> None:
    """Only an https origin: the agent builds every API path on it and pins its TLS."""
    if not isinstance(url, str) or len(url) > _MAX_URL_CHARS or not url.isprintable():
        raise ValueError("broker URL must be a short printable string")
    if any(char.isspace() for char in url):
        raise ValueError("broker URL must not contain spaces")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"broker URL is not a valid URL: {url[:80]!r}") from None
    if parts.scheme != "https":
        raise ValueError(f"broker URL must start with https:// (got {url[:80]!r})")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"broker URL has an invalid port: {url[:80]!r}") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError(f"broker URL must be https://host[:port]: {url[:80]!r}")
    if parts.path or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"broker URL must be https://host[:port], without a path: {url[:80]!r}")


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str) or not _SECRET.fullmatch(secret):
        raise ValueError("token secret must be URL-safe base64 text")
    if not _MIN_SECRET_CHARS <= len(secret) <= _MAX_SECRET_CHARS:
        raise ValueError(
            f"token secret must be {_MIN_SECRET_CHARS} to {_MAX_SECRET_CHARS} characters"
        )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
