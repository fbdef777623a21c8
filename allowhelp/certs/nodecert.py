"""A broker node's own certificate for the node-to-node relay (#21, docs/multinode.md).

Nodes that joined as documented share the CA (``ca.pem``/``ca.key``) and the
console's TLS certificate, so neither tells one node from another. Each node
therefore issues itself, at every start, a short-lived certificate under the
shared CA that names it: the URI ``urn:allowhelp:node:<node id>`` in its
subjectAltName, for client and server use. A peer is a node only when its
certificate chains to the CA *and* carries that URI *and* the id is a live row in
``broker_nodes`` (checked by the broker, ``node/relay_listener.py``): the
console's certificate, or anything else the CA signed, names no node.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from allowhelp.certs.errors import KeyFormatError
from allowhelp.certs.sshkeys import write_file_atomic

NODE_URI_PREFIX = "urn:allowhelp:node:"
NODE_CERT_LIFETIME = dt.timedelta(days=30)  # made again at every start
CLOCK_SKEW = dt.timedelta(minutes=5)
_NODE_ID = re.compile(r"[0-9a-f]{32}")


def node_uri(node_id: str) -> str:
    if _NODE_ID.fullmatch(node_id) is None:
        raise KeyFormatError(f"not a node id: {node_id!r}")
    return NODE_URI_PREFIX + node_id


def issue_node_certificate(
    ca_cert_path: Path, ca_key_path: Path, node_id: str, cert_path: Path, key_path: Path
) -> None:
    """Write a new key (0600) and a certificate naming ``node_id``, signed by the CA."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFormatError(f"cannot read the CA to make this node's certificate: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise KeyFormatError(f"{ca_key_path} is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + NODE_CERT_LIFETIME, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"allowhelp node {node_id}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(node_uri(node_id))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomic(key_path, pem_key, 0o600)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def node_id_in(peercert: object) -> str | None:
    """The node id a verified peer certificate names (``ssl`` ``getpeercert()`` form),
    or None: no certificate, no node URI, or more than one."""
    if not isinstance(peercert, dict):
        return None
    names = peercert.get("subjectAltName", ())
    found = [
        value[len(NODE_URI_PREFIX) :]
        for kind, value in names
        if kind == "URI" and isinstance(value, str) and value.startswith(NODE_URI_PREFIX)
    ]
    if len(found) != 1 or _NODE_ID.fullmatch(found[0]) is None:
        return None
    return found[0]
