"""A certificate authority of the test's own, standing in for a public one (Let's Encrypt).

Root → intermediate → leaf, as a public CA issues them: the admin gets the
leaf and the intermediate in one ``fullchain.pem`` and the key in
``privkey.pem``; clients trust only the root (``root.pem``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    chain: bytes  # leaf + intermediate, PEM
    key: bytes  # PKCS#8 PEM
    leaf: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    def install(self, cert: Path, key: Path) -> None:
        """Put the pair in place the way certbot does: whole files, renamed over."""
        for path, data in ((key, self.key), (cert, self.chain)):
            tmp = path.with_name(path.name + ".new")
            tmp.write_bytes(data)
            os.chmod(tmp, 0o600)
            tmp.replace(path)


class PublicCA:
    def __init__(self, folder: Path, name: str = "Test Public Root") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(_name(name), self.root_key, _name(name), self.root_key)
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = self._ca(_name(f"{name} R1"), self.mid_key, self.root.subject, self.root_key)
        self.root_file = folder / "root.pem"
        self.root_file.write_bytes(self.root.public_bytes(PEM))

    @staticmethod
    def _ca(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(days=1))
            .not_valid_after(_now() + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )

    def issue(
        self,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
        *,
        days: int = 90,
        expired: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        start = _now() - dt.timedelta(days=days + 2 if expired else 1)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.mid.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.mid_key, hashes.SHA256())
        )
        return Issued(leaf.public_bytes(PEM) + self.mid.public_bytes(PEM), key_pem(key), leaf)

    def client_context(self) -> ssl.SSLContext:
        """What a browser that trusts this root would accept."""
        return ssl.create_default_context(cafile=str(self.root_file))


def served_fingerprint(
    address: str, context: ssl.SSLContext, server_name: str = "localhost"
) -> str:
    """SHA-256 of the certificate a new TLS connection to ``HOST:PORT`` is served."""
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        # handshake inside the with: a refused certificate still closes the socket
        context.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False) as tls,
    ):
        tls.do_handshake()
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()
