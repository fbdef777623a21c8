"""The broker's small PKI: its own CA, the HTTPS certificate and the SSH tunnel key.

Agents trust the broker by the CA's fingerprint carried in the enrolment token,
so the CA is made once and never replaced; the TLS certificate under it can be
re-issued freely (new host names, renewal) without re-enrolling any agent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hmac
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from allowhelp.certs.errors import CertsError, KeyFormatError
from allowhelp.certs.hostnames import SanValue, general_names, sans_for, sans_of
from allowhelp.certs.pemfiles import (
    fingerprint,
    issued_by,
    key_pem,
    load_cert,
    load_ec_key,
    same_public_key,
    utc_now,
)
from allowhelp.certs.sshkeys import (
    KEY_TYPE,
    generate_host_key,
    load_private_key,
    public_key_line,
    write_file_atomic,
)

__all__ = [
    "AGENT_TLS_NAME",
    "BrokerPKI",
    "ca_fingerprint",
    "ensure_broker_pki",
    "fingerprints_equal",
]

TUNNEL_KEY_COMMENT = "allowhelp-broker"
CA_LIFETIME = dt.timedelta(days=3650)
TLS_LIFETIME = dt.timedelta(days=397)  # browsers refuse server certificates valid longer
RENEW_BEFORE = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(minutes=5)  # a client whose clock is a little behind still accepts
# The name agents ask for (SNI) at enrolment: a broker serving the admin's own
# certificate to browsers still answers it with the certificate made under its
# CA, which is what agents pin (broker/node/tls.py). ".invalid" never resolves.
AGENT_TLS_NAME = "agents.allowhelp.invalid"

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BrokerPKI:
    """Where the broker's keys live, and what agents pin about them."""

    data_dir: Path
    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path
    tunnel_key: Path
    ca_fingerprint: str
    tunnel_public_key: str


def ensure_broker_pki(data_dir: Path, hosts: Sequence[str]) -> BrokerPKI:
    """Create what is missing, renew what must be, and keep everything else.

    Safe to call at every start: the CA and the keys already made stay, so
    enrolled agents keep trusting the broker. Unspecified addresses (``0.0.0.0``,
    ``::``) are bind addresses nobody can connect to by name, so they are skipped.
    """
    wanted = sans_for(hosts)
    data_dir = Path(data_dir)
    _ensure_private_dir(data_dir)
    pki = _paths(data_dir)
    with _locked(data_dir):
        ca_cert, ca_key = _ensure_ca(pki.ca_cert, pki.ca_key)
        _ensure_tls(pki.tls_cert, pki.tls_key, ca_cert, ca_key, wanted)
        tunnel_line = _ensure_tunnel_key(pki.tunnel_key)
    return BrokerPKI(
        data_dir=data_dir,
        ca_cert=pki.ca_cert,
        ca_key=pki.ca_key,
        tls_cert=pki.tls_cert,
        tls_key=pki.tls_key,
        tunnel_key=pki.tunnel_key,
        ca_fingerprint=fingerprint(ca_cert),
        tunnel_public_key=f"{tunnel_line} {TUNNEL_KEY_COMMENT}",
    )


@dataclass(frozen=True)
class _Paths:
    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path
    tunnel_key: Path


def _paths(data_dir: Path) -> _Paths:
    return _Paths(
        ca_cert=data_dir / "ca.pem",
        ca_key=data_dir / "ca.key",
        tls_cert=data_dir / "tls.pem",
        tls_key=data_dir / "tls.key",
        tunnel_key=data_dir / "tunnel_key",
    )


def _ensure_private_dir(data_dir: Path) -> None:
    """Keys live here: other local users must not even list the directory."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not data_dir.is_dir():
        raise CertsError(f"{data_dir} is not a directory")
    os.chmod(data_dir, 0o700)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise concurrent callers (``serve`` and ``token create`` on a first start).

    Without it two processes could each make a CA and leave one's key beside the
    other's certificate: a broker that can never start again.
    """
    fd = os.open(data_dir / ".pki.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- the CA -----------------------------------------------------------------------


def _ensure_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA, or make one if neither half exists.

    Half a CA is an error, not a cue to make a new one: a new CA would silently
    break every enrolled agent's trust.
    """
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if not have_cert and not have_key:
        cert, key = _new_ca()
        write_file_atomic(key_path, key_pem(key), 0o600)
        write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert, key
    if have_cert != have_key:
        missing = key_path if have_cert else cert_path
        raise CertsError(
            f"{missing} is missing but its CA counterpart exists: restore it from a backup, "
            "or remove both to make a new CA (every agent must then enrol again)"
        )
    cert = load_cert(cert_path)
    key = load_ec_key(key_path)
    if not same_public_key(cert, key):
        raise CertsError(
            f"{key_path} does not belong to {cert_path}: restore the pair from a backup"
        )
    return cert, key


def _new_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"allowhelp broker CA {secrets.token_hex(4)}")]
    )
    now = utc_now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()), key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """CA keys only sign certificates and CRLs; the server key only signs handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- the TLS certificate --------------------------------------------------------------


def _ensure_tls(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    wanted: list[SanValue],
) -> None:
    """Keep the current certificate when it is still good for every host, else re-issue."""
    current = _current_tls(cert_path, key_path, ca_cert)
    if current is not None and _still_good(current, wanted):
        return
    names = _merge(sans_of(current) if current is not None else [], wanted)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _new_tls_cert(key, ca_cert, ca_key, names)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    # Key first: a crash between the two writes leaves a mismatch that the next
    # call detects and repairs, never a certificate whose key is lost.
    write_file_atomic(key_path, key_pem(key), 0o600)
    write_file_atomic(cert_path, chain, 0o644)


def _current_tls(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate
) -> x509.Certificate | None:
    """The existing certificate if it is usable with this CA and key; None to re-issue."""
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        cert = load_cert(cert_path)
        key = load_ec_key(key_path)
    except CertsError:
        return None
    if not same_public_key(cert, key) or not issued_by(cert, ca_cert):
        return None
    return cert


def _still_good(cert: x509.Certificate, wanted: list[SanValue]) -> bool:
    if cert.not_valid_after_utc - utc_now() < RENEW_BEFORE:
        return False
    have = sans_of(cert)
    return all(name in have for name in wanted)


def _merge(old: list[SanValue], wanted: list[SanValue]) -> list[SanValue]:
    """Keep the names already served, so a renewal never drops a working name."""
    return [*wanted, *(name for name in old if name not in wanted)]


def _new_tls_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[SanValue],
) -> x509.Certificate:
    now = utc_now()
    not_before = now - CLOCK_SKEW
    not_after = min(not_before + TLS_LIFETIME, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "allowhelp broker")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


# --- the SSH tunnel key ---------------------------------------------------------------


def _ensure_tunnel_key(path: Path) -> str:
    """The key agents pin at enrolment: made once, then only ever read."""
    if not path.exists():
        return generate_host_key(path, comment=TUNNEL_KEY_COMMENT)
    key = load_private_key(path)
    if key.algorithm != KEY_TYPE.encode("ascii"):
        raise CertsError(f"{path} is not an {KEY_TYPE} key: agents accept only {KEY_TYPE}")
    os.chmod(path, 0o600)
    return public_key_line(key)


# --- what agents pin ------------------------------------------------------------------


def one_certificate(cert_pem: bytes) -> str:
    """``cert_pem`` as one PEM certificate, re-encoded; ``KeyFormatError`` for anything
    else. An agent pins the broker's CA by the fingerprint of one certificate: a text
    with a second one after it (a man in the middle's CA) would match the pin and
    have both trusted."""
    if cert_pem.count(b"-----BEGIN ") != 1:
        raise KeyFormatError("not exactly one PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise KeyFormatError(f"not a PEM certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def ca_fingerprint(cert_pem: bytes) -> str:
    """The value agents pin: SHA-256 of the first certificate's DER, lowercase hex."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise KeyFormatError(f"not a PEM certificate: {exc}") from None
    return fingerprint(cert)


def _normalise_fingerprint(text: str) -> str:
    return text.strip().replace(":", "").lower()


def fingerprints_equal(a: str, b: str) -> bool:
    """Compare pinned fingerprints in constant time; malformed ones never match.

    Refusing anything but 64 hex digits keeps two empty or truncated values from
    ever counting as a successful pin.
    """
    left, right = _normalise_fingerprint(a), _normalise_fingerprint(b)
    well_formed = bool(_HEX64.fullmatch(left)) and bool(_HEX64.fullmatch(right))
    same = hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))
    return well_formed and same
