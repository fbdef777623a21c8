"""The broker PKI and the SSH key helpers, checked with real crypto and real TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from allowhelp.certs.errors import CertsError
from allowhelp.certs.pki import (
    BrokerPKI,
    ca_fingerprint,
    ensure_broker_pki,
    fingerprints_equal,
)
from allowhelp.certs.sshkeys import (
    agent_id_for,
    generate_host_key,
    key_fingerprint,
    load_private_key,
    parse_public_key,
    public_key_line,
    write_file_atomic,
)

HOSTS = ["helpdesk.example.org", "192.0.2.10"]


@pytest.fixture
def pki(tmp_path: Path) -> BrokerPKI:
    return ensure_broker_pki(tmp_path / "data", HOSTS)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _leaf(pki: BrokerPKI) -> x509.Certificate:
    return _chain(pki.tls_cert)[0]


def _ca(pki: BrokerPKI) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _snapshot(pki: BrokerPKI) -> dict[str, bytes]:
    paths = [pki.ca_cert, pki.ca_key, pki.tls_cert, pki.tls_key, pki.tunnel_key]
    return {path.name: path.read_bytes() for path in paths}


def _assert_p256(cert: x509.Certificate) -> None:
    """Browsers refuse Ed25519 server certificates; P-256 works everywhere."""
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- files and modes -------------------------------------------------------------


def test_files_and_modes(pki: BrokerPKI) -> None:
    assert _mode(pki.data_dir) == 0o700
    for key in (pki.ca_key, pki.tls_key, pki.tunnel_key):
        assert _mode(key) == 0o600, key
    assert pki.ca_cert == pki.data_dir / "ca.pem"
    assert pki.ca_key == pki.data_dir / "ca.key"
    assert pki.tls_cert == pki.data_dir / "tls.pem"
    assert pki.tls_key == pki.data_dir / "tls.key"
    assert pki.tunnel_key == pki.data_dir / "tunnel_key"
    assert not list(pki.data_dir.glob(".*.tmp"))


def test_keys_private_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    pki = ensure_broker_pki(tmp_path / "data", [])
    assert _mode(pki.data_dir) == 0o700
    for key in (pki.ca_key, pki.tls_key, pki.tunnel_key):
        assert _mode(key) == 0o600, key


def test_existing_dir_and_keys_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    pki = ensure_broker_pki(data, [])
    assert _mode(data) == 0o700
    pki.tls_key.chmod(0o644)
    pki.tunnel_key.chmod(0o644)
    data.chmod(0o755)
    ensure_broker_pki(data, [])
    assert _mode(data) == 0o700
    assert _mode(pki.tls_key) == 0o600
    assert _mode(pki.tunnel_key) == 0o600


# --- the certificates ------------------------------------------------------------


def test_ca_certificate(pki: BrokerPKI) -> None:
    ca = _ca(pki)
    _assert_p256(ca)
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert re.fullmatch(r"allowhelp broker CA \w+", str(common_name))
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime <= dt.timedelta(days=3651)


def test_tls_certificate_chain_and_sans(pki: BrokerPKI) -> None:
    chain = _chain(pki.tls_cert)
    leaf, ca = chain[0], _ca(pki)
    assert len(chain) == 2
    assert chain[1] == ca
    leaf.verify_directly_issued_by(ca)
    _assert_p256(leaf)
    sans = _sans(leaf)
    assert {"localhost", "helpdesk.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    ips = set(sans.get_values_for_type(x509.IPAddress))
    expected_ips = {"127.0.0.1", "::1", "192.0.2.10"}
    assert {ipaddress.ip_address(ip) for ip in expected_ips} <= ips
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=397)
    assert leaf.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_tls_key_matches_certificate(pki: BrokerPKI) -> None:
    key = serialization.load_pem_private_key(pki.tls_key.read_bytes(), password=None)
    assert key.public_key() == _leaf(pki).public_key()


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.DNSName("helpdesk.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
    ],
)
def test_web_pki_verifier_accepts(pki: BrokerPKI, subject: x509.DNSName | x509.IPAddress) -> None:
    """cryptography's RFC 5280 / CA-Browser-Forum verifier is what browsers enforce."""
    verifier = PolicyBuilder().store(Store([_ca(pki)])).build_server_verifier(subject)
    chain = verifier.verify(_leaf(pki), [])
    assert chain[-1] == _ca(pki)


# --- a real TLS handshake ----------------------------------------------------------


async def _handshake(pki: BrokerPKI, server_hostname: str, cadata: str) -> bytes:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.tls_cert, pki.tls_key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello")
            await writer.drain()
        finally:
            writer.close()

    client_ctx = ssl.create_default_context(cadata=cadata)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
        )
        try:
            return await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
async def test_tls_handshake_trusting_only_the_ca(pki: BrokerPKI, server_hostname: str) -> None:
    data = await _handshake(pki, server_hostname, pki.ca_cert.read_text())
    assert data == b"hello"


async def test_tls_handshake_fails_for_a_name_not_covered(pki: BrokerPKI) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(pki, "other.example.org", pki.ca_cert.read_text())


async def test_tls_handshake_fails_with_another_ca(pki: BrokerPKI, tmp_path: Path) -> None:
    other = ensure_broker_pki(tmp_path / "other", [])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(pki, "localhost", other.ca_cert.read_text())


# --- idempotence and re-issue -------------------------------------------------------


def test_second_call_changes_nothing(pki: BrokerPKI) -> None:
    before = _snapshot(pki)
    again = ensure_broker_pki(pki.data_dir, list(reversed(HOSTS)))
    assert again == pki
    assert _snapshot(again) == before


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: ensure_broker_pki(data, HOSTS), range(6)))
    assert len({(r.ca_fingerprint, r.tunnel_public_key) for r in results}) == 1
    assert ensure_broker_pki(data, HOSTS) == results[0]


def test_subset_of_hosts_changes_nothing(pki: BrokerPKI) -> None:
    before = _snapshot(pki)
    assert ensure_broker_pki(pki.data_dir, ["HelpDesk.Example.org."]) == pki
    assert _snapshot(pki) == before


def test_new_host_reissues_tls_under_the_same_ca(pki: BrokerPKI) -> None:
    before = _snapshot(pki)
    again = ensure_broker_pki(pki.data_dir, ["new.example.org", "2001:db8::1"])
    assert again.ca_fingerprint == pki.ca_fingerprint
    assert again.tunnel_public_key == pki.tunnel_public_key
    after = _snapshot(again)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["ca.key"] == before["ca.key"]
    assert after["tunnel_key"] == before["tunnel_key"]
    assert after["tls.pem"] != before["tls.pem"]
    leaf = _leaf(again)
    leaf.verify_directly_issued_by(_ca(again))
    sans = _sans(leaf)
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {"new.example.org", "helpdesk.example.org", "localhost"} <= dns
    assert ipaddress.ip_address("2001:db8::1") in sans.get_values_for_type(x509.IPAddress)
    assert _mode(again.tls_key) == 0o600


def _write_expiring_leaf(pki: BrokerPKI, days_left: int) -> None:
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(_ca(pki).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=300))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in ("localhost", "helpdesk.example.org")]
                + [
                    x509.IPAddress(ipaddress.ip_address(ip))
                    for ip in ("127.0.0.1", "::1", "192.0.2.10")
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_file_atomic(
        pki.tls_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_file_atomic(pki.tls_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def test_expiring_tls_certificate_is_renewed(pki: BrokerPKI) -> None:
    _write_expiring_leaf(pki, days_left=10)
    again = ensure_broker_pki(pki.data_dir, HOSTS)
    assert again.ca_fingerprint == pki.ca_fingerprint
    leaf = _leaf(again)
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    leaf.verify_directly_issued_by(_ca(again))


def test_tls_certificate_with_time_left_is_kept(pki: BrokerPKI) -> None:
    _write_expiring_leaf(pki, days_left=60)
    before = pki.tls_cert.read_bytes()
    ensure_broker_pki(pki.data_dir, HOSTS)
    assert pki.tls_cert.read_bytes() == before


def test_mismatched_tls_key_is_repaired(pki: BrokerPKI) -> None:
    stray = ec.generate_private_key(ec.SECP256R1())
    pem = stray.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file_atomic(pki.tls_key, pem)
    again = ensure_broker_pki(pki.data_dir, HOSTS)
    key = serialization.load_pem_private_key(again.tls_key.read_bytes(), password=None)
    assert key.public_key() == _leaf(again).public_key()
    assert again.ca_fingerprint == pki.ca_fingerprint


@pytest.mark.parametrize("missing", ["ca.key", "ca.pem"])
def test_half_a_ca_is_refused_not_replaced(pki: BrokerPKI, missing: str) -> None:
    (pki.data_dir / missing).unlink()
    with pytest.raises(CertsError, match=missing):
        ensure_broker_pki(pki.data_dir, HOSTS)


def test_corrupt_tunnel_key_is_refused(pki: BrokerPKI) -> None:
    pki.tunnel_key.write_text("garbage")
    with pytest.raises(CertsError, match="tunnel_key"):
        ensure_broker_pki(pki.data_dir, HOSTS)


# --- host validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "",
        "https://helpdesk.example.org",
        "helpdesk.example.org:8443",
        "helpdesk.example.org/x",
        "bad host",
        "-bad.example.org",
        "bad-.example.org",
        "two..dots",
        "under_score.example.org",
        "*.org",
        "a" * 64 + ".example.org",
        "fe80::1%eth0",
    ],
)
def test_invalid_hosts_are_refused_before_anything_is_written(tmp_path: Path, host: str) -> None:
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="host"):
        ensure_broker_pki(data, ["ok.example.org", host])
    assert not data.exists()


def test_a_single_string_is_not_a_host_list(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ensure_broker_pki(tmp_path / "data", "helpdesk.example.org")


def test_accepted_host_forms(tmp_path: Path) -> None:
    pki = ensure_broker_pki(
        tmp_path / "data", ["0.0.0.0", "::", "[2001:db8::2]", "*.branch.example", "bücher.example"]
    )
    sans = _sans(_leaf(pki))
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {"*.branch.example", "xn--bcher-kva.example"} <= dns
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert ipaddress.ip_address("2001:db8::2") in ips
    assert ipaddress.ip_address("0.0.0.0") not in ips
    assert ipaddress.ip_address("::") not in ips


# --- fingerprints -----------------------------------------------------------------------


def test_ca_fingerprint_is_sha256_of_der(pki: BrokerPKI) -> None:
    der = _ca(pki).public_bytes(serialization.Encoding.DER)
    assert pki.ca_fingerprint == hashlib.sha256(der).hexdigest()
    assert ca_fingerprint(pki.ca_cert.read_bytes()) == pki.ca_fingerprint
    leaf_der = _leaf(pki).public_bytes(serialization.Encoding.DER)
    assert ca_fingerprint(pki.tls_cert.read_bytes()) == hashlib.sha256(leaf_der).hexdigest()


def test_ca_fingerprint_of_junk() -> None:
    with pytest.raises(CertsError):
        ca_fingerprint(b"not a certificate")
    with pytest.raises(ValueError):
        ca_fingerprint(b"")


def test_fingerprints_equal(pki: BrokerPKI) -> None:
    fp = pki.ca_fingerprint
    colons = ":".join(fp[i : i + 2] for i in range(0, 64, 2))
    assert fingerprints_equal(fp, fp)
    assert fingerprints_equal(fp, colons.upper())
    assert fingerprints_equal(f" {colons} ", fp)
    assert not fingerprints_equal(fp, fp[:-1] + ("0" if fp[-1] != "0" else "1"))
    assert not fingerprints_equal("", "")
    assert not fingerprints_equal(fp[:32], fp[:32])
    assert not fingerprints_equal("é" * 64, "é" * 64)


# --- SSH keys ---------------------------------------------------------------------------


def test_tunnel_key(pki: BrokerPKI) -> None:
    assert pki.tunnel_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert re.fullmatch(r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+ allowhelp-broker", pki.tunnel_public_key)
    key = load_private_key(pki.tunnel_key)
    assert f"{public_key_line(key)} allowhelp-broker" == pki.tunnel_public_key


def test_generate_host_key(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "host_key"
    line = generate_host_key(path)
    assert _mode(path) == 0o600
    assert re.fullmatch(r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+", line)
    assert public_key_line(load_private_key(path)) == line
    assert generate_host_key(path) != line  # a new identity replaces the old one
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="missing"):
        load_private_key(tmp_path / "nope")
    with pytest.raises(CertsError):
        load_private_key(tmp_path)
    junk = tmp_path / "junk"
    junk.write_text("garbage")
    with pytest.raises(CertsError, match="junk"):
        load_private_key(junk)


def test_agent_id_is_stable_and_distinct(tmp_path: Path) -> None:
    line = generate_host_key(tmp_path / "a")
    key = load_private_key(tmp_path / "a")
    agent_id = agent_id_for(key)
    assert re.fullmatch(r"a-[a-z2-7]{20}", agent_id)
    assert agent_id_for(line) == agent_id
    assert agent_id_for(line + " some comment") == agent_id
    assert agent_id_for(key.convert_to_public()) == agent_id
    digest = hashlib.sha256(key.public_data).digest()
    assert agent_id == "a-" + base64.b32encode(digest).decode().lower()[:20]
    other = generate_host_key(tmp_path / "b")
    assert agent_id_for(other) != agent_id


def test_public_key_line_drops_the_comment() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="me@pc")
    exported = key.export_public_key("openssh").decode()
    assert exported.rstrip().endswith("me@pc")
    line = public_key_line(exported)
    assert line == " ".join(exported.split()[:2])
    assert public_key_line(key) == line
    assert public_key_line(f"  {line}\n") == line


def test_key_fingerprint_matches_asyncssh() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    expected = key.get_fingerprint("sha256")
    assert expected.startswith("SHA256:")
    assert key_fingerprint(key) == expected
    assert key_fingerprint(public_key_line(key)) == expected


def _rsa_line() -> str:
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    return key.export_public_key("openssh").decode()


def _ecdsa_line() -> str:
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    return key.export_public_key("openssh").decode()


@pytest.mark.parametrize("make", [_rsa_line, _ecdsa_line], ids=["rsa", "ecdsa"])
def test_parse_refuses_other_key_types(make: object) -> None:
    assert callable(make)
    line = make()
    with pytest.raises(CertsError, match="ssh-ed25519"):
        parse_public_key(line)
    blob = line.split()[1]
    with pytest.raises(ValueError):
        parse_public_key(f"ssh-ed25519 {blob}")  # the blob says otherwise


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "garbage",
        "ssh-ed25519",
        "ssh-ed25519 !!!notbase64!!!",
        "ssh-ed25519 AAAA",
        "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x01x").decode(),
        "ssh-ed25519 " + "A" * 10000,
        'from="1.2.3.4" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA',
    ],
)
def test_parse_refuses_garbage(line: str) -> None:
    with pytest.raises(CertsError) as info:
        parse_public_key(line)
    assert isinstance(info.value, ValueError)


def test_parse_refuses_trailing_bytes_in_the_blob() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    blob = base64.b64encode(key.public_data + b"xx").decode()
    with pytest.raises(CertsError):
        parse_public_key(f"ssh-ed25519 {blob}")


def test_write_file_atomic_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_file_atomic(target, b"one")
    write_file_atomic(target, b"two", 0o644)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
