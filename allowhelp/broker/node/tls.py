"""The console's TLS: the broker's own certificate, or the admin's, renewed on SIGHUP.

With ``--tls-cert FILE --tls-key FILE`` the console serves the admin's
certificate (say a public one with its chain) instead of the one the broker
made under its own CA. Both files are read once, checked (PEM, a key that
belongs to the leaf, not expired) and loaded from memory, so what is checked
is what is served; a bad file is one line and a refusal to start.

SIGHUP reads the files again. A good pair becomes the certificate of every
*new* handshake; connections already open keep theirs, so nothing drops. A
bad one changes nothing: the old certificate stays and the log says why (at
ERROR). The swap is one reference: the listening context's SNI callback hands
each new handshake the current context (``SSLObject.context``), so no
handshake ever sees a half-loaded certificate.

Agents never use the console certificate. They pin the broker's own CA (its
SHA-256 is in the enrolment token) and ask for the broker's own certificate
by the name ``AGENT_TLS_NAME`` (SNI): that name always gets the certificate
made under the broker's CA, whatever the console serves to browsers. The
tunnel is SSH, pinned by keys, with no TLS at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from allowhelp.certs.pki import AGENT_TLS_NAME

log = logging.getLogger(__name__)

MAX_FILE = 1024 * 1024  # a certificate chain or a key is a few KiB


@dataclass(frozen=True)
class ServedCertificate:
    """One loaded certificate: its context, and what the log and tests show of it."""

    context: ssl.SSLContext
    fingerprint: str  # SHA-256 of the leaf, lowercase hex
    subject: str
    not_after: dt.datetime


def load_pair(cert_path: Path, key_path: Path) -> ServedCertificate:
    """Read, check and load a certificate chain and its key, or raise ``ValueError``
    with one line that says which file is wrong and what to do."""
    chain_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ValueError(
            f"{cert_path} is not a PEM certificate chain (give the full chain, leaf first,"
            " e.g. fullchain.pem)"
        ) from None
    key = _private_key(key_pem, key_path)
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the private key of the certificate in {cert_path}")
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= now:
        raise ValueError(
            f"the certificate in {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    context = _context_from_memory(chain_pem + b"\n" + key_pem, cert_path)
    return ServedCertificate(
        context=context,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise ValueError(f"{path} is too large for a {what} (over {MAX_FILE} bytes)")
    return data


def _private_key(key_pem: bytes, key_path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(
            f"{key_path} is encrypted: give the key without a passphrase (readable by the"
            " broker's user only)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{key_path} is not a PEM private key") from None


def _context_from_memory(pem: bytes, cert_path: Path) -> ssl.SSLContext:
    """``load_cert_chain`` wants a path: give it an anonymous in-memory file, so
    the bytes checked above are the bytes loaded and nothing touches the disk."""
    context = server_context()
    with _memory_file(pem) as path:
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            raise ValueError(f"the certificate in {cert_path} cannot be served: {reason}") from None
    return context


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("allowhelp-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class CertificateFiles:
    """``--tls-cert`` and ``--tls-key``: read again at every SIGHUP."""

    cert: Path
    key: Path

    def load(self) -> ServedCertificate:
        return load_pair(self.cert, self.key)


class ConsoleTLS:
    """The context uvicorn listens with, and which certificate each handshake gets.

    ``admin``: the admin's files and the certificate loaded from them at start
    (loaded before the data folder is touched, so a bad file changes nothing).
    """

    def __init__(
        self,
        own: ServedCertificate,
        admin: tuple[CertificateFiles, ServedCertificate] | None = None,
    ) -> None:
        self._own = own
        self._files = admin[0] if admin is not None else None
        self._served = admin[1] if admin is not None else own
        # The listening context; its callback runs first in every handshake.
        self.context = self._served.context
        if admin is not None:
            self.context.sni_callback = self._pick
            served = self._served
            log.info(
                "console certificate %s (%s, valid until %s) from %s",
                served.fingerprint[:16],
                served.subject,
                f"{served.not_after:%Y-%m-%d}",
                admin[0].cert,
            )

    @property
    def served(self) -> ServedCertificate:
        """What a browser gets now."""
        return self._served

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        chosen = self._own if server_name == AGENT_TLS_NAME else self._served
        conn.context = chosen.context

    def reload(self) -> bool:
        """SIGHUP: serve the files as they are now, or keep the old certificate
        (and say why at ERROR). True when the new certificate is served."""
        if self._files is None:
            log.info("SIGHUP: the console serves the broker's own certificate; nothing to reload")
            return False
        try:
            fresh = self._files.load()
        except ValueError as exc:
            log.error(
                "SIGHUP: the renewed certificate is refused, still serving %s (valid until %s): %s",
                self._served.fingerprint[:16],
                f"{self._served.not_after:%Y-%m-%d}",
                exc,
            )
            return False
        old, self._served = self._served, fresh
        log.info(
            "SIGHUP: console certificate %s (%s, valid until %s) replaces %s for new connections",
            fresh.fingerprint[:16],
            fresh.subject,
            f"{fresh.not_after:%Y-%m-%d}",
            old.fingerprint[:16],
        )
        return True
