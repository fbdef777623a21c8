"""Signatures on fleet jobs: the broker signs each job for one PC, the PC checks it.

The key is the broker's tunnel key (Ed25519, ``DATA/tunnel_key``), which every
agent pinned at enrolment: PCs enrolled before jobs existed can check jobs
without enrolling again, and no second secret has to be kept and backed up
beside it. A separate key would add nothing against someone who holds the data
folder (both would sit there), and the agent already trusts whoever holds the
tunnel key to be the broker. The signed bytes start with ``JOB_CONTEXT``, a
prefix no SSH signature begins with, so a job signature is never a valid SSH
authentication signature and no SSH signature is ever a valid job.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from allowhelp.certs.errors import CertsError

__all__ = ["JOB_CONTEXT", "SEAL_CONTEXT", "JobSigner", "job_signature_ok"]

JOB_CONTEXT = b"allowhelp-job-v1\x00"
# The broker's seal on a job as it keeps it (``JobRecord.sealed``): another prefix, so
# a seal is never a job signature a PC would take, nor the other way round.
SEAL_CONTEXT = b"allowhelp-job-seal-v1\x00"
_SIGNATURE_B64 = 88  # 64 bytes in base64


class JobSigner:
    """The broker's signing half, loaded once from the tunnel key file."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load(cls, path: Path) -> JobSigner:
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise CertsError(f"cannot read the job signing key {path}: {exc.strerror}") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertsError(f"{path} is not a usable Ed25519 key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CertsError(f"{path} is not an Ed25519 key")
        return cls(key)

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self._key.sign(JOB_CONTEXT + payload)).decode("ascii")

    def seal(self, kept: bytes) -> str:
        """The broker's seal on a job as stored: whoever can change the database but
        does not hold this key cannot make a job the broker will sign for a PC."""
        return base64.b64encode(self._key.sign(SEAL_CONTEXT + kept)).decode("ascii")

    def seal_ok(self, kept: bytes, seal: str) -> bool:
        if len(seal) != _SIGNATURE_B64:
            return False
        try:
            self._key.public_key().verify(
                base64.b64decode(seal, validate=True), SEAL_CONTEXT + kept
            )
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True


def job_signature_ok(public_key_line: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is the holder of ``public_key_line``'s over ``payload``.
    Anything malformed is simply not a valid signature."""
    if len(signature) != _SIGNATURE_B64:
        return False
    try:
        public = serialization.load_ssh_public_key(public_key_line.encode("ascii"))
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm, binascii.Error):
        return False
    if not isinstance(public, Ed25519PublicKey):
        return False
    try:
        public.verify(raw, JOB_CONTEXT + payload)
    except InvalidSignature:
        return False
    return True
