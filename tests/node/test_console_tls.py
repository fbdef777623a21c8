"""The admin's own console certificate (``serve --tls-cert F --tls-key K``), tried for real.

A CA made here stands in for a public one (root → intermediate → leaf, the
leaf and intermediate in ``fullchain.pem``). Real broker processes serve it;
clients connect with ``ssl`` trusting only that root and compare the served
certificate's SHA-256. A renewal is files renamed into place and a real
SIGHUP: new connections get the new certificate, an open WebSocket keeps
going, and a bad renewal changes nothing but the log. Bad flags at start are
one line and exit 2, with nothing made. Agents keep pinning the broker's own
CA: one enrols and comes online while the public certificate is served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from allowhelp.agent.enrol import pinned_context
from allowhelp.certs.pki import AGENT_TLS_NAME, ca_fingerprint
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    log_mark,
    log_since,
    online,
    wait_for,
)
from tlskit import Issued, PublicCA, served_fingerprint

REFUSED = "the renewed certificate is refused"


@dataclass
class PublicBroker(Broker):
    """A broker whose console clients trust the public root, as browsers would."""

    trust: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        assert self.trust is not None
        return ssl.create_default_context(cafile=str(self.trust))


@dataclass
class World:
    fleet: Fleet
    broker: PublicBroker
    ca: PublicCA
    cert: Path
    key: Path
    first: Issued
    extra: list[Issued] = field(default_factory=list)

    @property
    def https(self) -> str:
        return str(self.broker.info["https"])

    def served(self, server_name: str = "localhost") -> str:
        return served_fingerprint(self.https, self.ca.client_context(), server_name)

    def sighup(self) -> None:
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ca = PublicCA(tmp_path / "public-ca")
    live = tmp_path / "letsencrypt" / "live"
    live.mkdir(parents=True)
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    first = ca.issue()
    first.install(cert, key)
    fleet = Fleet(tmp_path)
    broker = PublicBroker(
        tmp_path / "broker",
        extra=["--tls-cert", str(cert), "--tls-key", str(key)],
        trust=ca.root_file,
    )
    fleet.brokers.append(broker)
    try:
        broker.start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        yield World(fleet, broker, ca, cert, key, first)
    finally:
        fleet.close()


def own_leaf_fingerprint(data: Path) -> str:
    leaf = x509.load_pem_x509_certificates((data / "tls.pem").read_bytes())[0]
    return leaf.fingerprint(hashes.SHA256()).hex()


def test_the_console_serves_the_admins_certificate_not_its_own(world: World) -> None:
    assert world.served() == world.first.fingerprint
    # A browser that knows only the broker's own CA is not served that one any more.
    own_ca = ssl.create_default_context(cafile=str(world.broker.data / "ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        served_fingerprint(world.https, own_ca)
    with world.broker.sync_client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
    # The chain says which certificate this broker process started with.
    exported = broker_cli("audit", "export", "--data", str(world.broker.data)).stdout
    started = [r for r in map(json.loads, exported.splitlines()) if r["type"] == "broker.started"]
    assert started[-1]["details"]["console_certificate"] == world.first.fingerprint


async def test_sighup_serves_a_renewed_certificate_to_new_connections_and_keeps_open_ones(
    world: World,
) -> None:
    desk = await asyncio.to_thread(Desk.login, world.broker, TECH, TECH_PW)
    url = world.broker.url.replace("https://", "wss://") + "/api/v1/events"
    async with websockets.connect(
        url,
        ssl=world.ca.client_context(),
        origin=world.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as feed:
        assert json.loads(await asyncio.wait_for(feed.recv(), 10))["type"] == "hello"
        renewed = world.ca.issue()
        assert renewed.fingerprint != world.first.fingerprint
        mark = log_mark(world.broker.log)
        renewed.install(world.cert, world.key)
        world.sighup()
        await asyncio.to_thread(
            wait_for,
            lambda: world.served() == renewed.fingerprint,
            15,
            "new connections to get the renewed certificate",
        )
        # The console feed opened before the renewal is still the same connection,
        # on the first certificate, and still answers.
        pong = await feed.ping()
        await asyncio.wait_for(pong, 10)
        tls = feed.transport.get_extra_info("ssl_object")
        assert hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest() == (
            world.first.fingerprint
        )
    desk.close()
    said = log_since(world.broker.log, mark)
    assert f"console certificate {renewed.fingerprint[:16]}" in said
    assert world.broker.proc is not None and world.broker.proc.poll() is None


def _mismatched_key(world: World) -> None:
    world.cert.write_bytes(world.ca.issue().chain)
    world.key.write_bytes(world.ca.issue().key)


def _truncated_chain(world: World) -> None:
    world.cert.write_bytes(world.first.chain[:200])


def _der_certificate(world: World) -> None:
    world.cert.write_bytes(world.ca.issue().leaf.public_bytes(serialization.Encoding.DER))


def _key_gone(world: World) -> None:
    world.key.unlink()


def _expired(world: World) -> None:
    world.ca.issue(days=30, expired=True).install(world.cert, world.key)


BAD_RENEWALS: dict[str, tuple[Callable[[World], None], str]] = {
    "a key that does not match": (_mismatched_key, "is not the private key of the certificate"),
    "a truncated chain": (_truncated_chain, "is not a PEM certificate chain"),
    "a DER certificate": (_der_certificate, "is not a PEM certificate chain"),
    "an unreadable key": (_key_gone, "cannot read the private key"),
    "an expired certificate": (_expired, "expired on"),
}


def _refusal_after(world: World, mark: int, name: str) -> str:
    def refused() -> str | None:
        text = log_since(world.broker.log, mark)
        return text if REFUSED in text else None

    said: str = wait_for(refused, 15, f"the broker to refuse {name}")
    return said


def test_a_bad_renewal_keeps_serving_the_old_certificate_and_says_why(world: World) -> None:
    for name, (spoil, reason) in BAD_RENEWALS.items():
        world.first.install(world.cert, world.key)
        spoil(world)
        mark = log_mark(world.broker.log)
        world.sighup()
        said = _refusal_after(world, mark, name)
        line = next(line for line in said.splitlines() if REFUSED in line)
        assert " ERROR " in line and reason in line, (name, line)
        assert world.served() == world.first.fingerprint, name
        assert world.broker.proc is not None and world.broker.proc.poll() is None, name
    # And a good file after all of them is taken.
    world.first.install(world.cert, world.key)
    renewed = world.ca.issue()
    renewed.install(world.cert, world.key)
    world.sighup()
    wait_for(lambda: world.served() == renewed.fingerprint, 15, "the good renewal")


def test_an_agent_enrols_and_connects_while_a_public_certificate_is_served(
    world: World,
) -> None:
    broker = world.broker
    agent = world.fleet.agent()
    enrolled = agent.enroll(broker.token())
    assert enrolled.returncode == 0, enrolled.stderr
    config = json.loads((agent.config / "agent.json").read_text())
    own_ca = (broker.data / "ca.pem").read_text()
    assert config["ca_pem"] == own_ca  # it pinned the broker's CA, not the public one
    assert config["ca_fingerprint"] == ca_fingerprint(own_ca.encode())
    agent.start("--reconnect-cap", "2")
    wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
    # What the agent trusts never accepts the console's public certificate; asked
    # by the agents' name, the broker answers with its own, under the pinned CA.
    pinned = pinned_context(config["ca_pem"])
    with pytest.raises(ssl.SSLCertVerificationError):
        served_fingerprint(world.https, pinned, "localhost")
    assert served_fingerprint(world.https, pinned, AGENT_TLS_NAME) == own_leaf_fingerprint(
        broker.data
    )
    assert world.served() == world.first.fingerprint  # browsers still get the public one


# --- bad flags at start: one line, exit 2, nothing made ---------------------------------


def _files(root: Path, ca: PublicCA) -> dict[str, Path]:
    good, other = ca.issue(), ca.issue()
    files = {
        "cert": good.chain,
        "key": good.key,
        "other_key": other.key,
        "garbage": b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        "der": good.leaf.public_bytes(serialization.Encoding.DER),
        "encrypted_key": serialization.load_pem_private_key(good.key, None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    }
    expired = ca.issue(days=30, expired=True)
    files |= {"expired": expired.chain, "expired_key": expired.key}
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.pem"
        paths[name].write_bytes(data)
    paths["missing"] = root / "missing.pem"
    paths["folder"] = root
    return paths


START_CASES: dict[str, tuple[tuple[str | None, str | None], str]] = {
    "--tls-cert alone": (("cert", None), "--tls-cert needs --tls-key too"),
    "--tls-key alone": ((None, "key"), "--tls-key needs --tls-cert too"),
    "a missing certificate": (("missing", "key"), "cannot read the certificate"),
    "a folder for a key": (("cert", "folder"), "cannot read the private key"),
    "a broken certificate": (("garbage", "key"), "is not a PEM certificate chain"),
    "a DER certificate": (("der", "key"), "is not a PEM certificate chain"),
    "another certificate's key": (("cert", "other_key"), "is not the private key of"),
    "an encrypted key": (("cert", "encrypted_key"), "is encrypted"),
    "the flags swapped": (("key", "cert"), "is not a PEM certificate chain"),
    "an expired certificate": (("expired", "expired_key"), "expired on"),
}


@pytest.mark.parametrize("case", list(START_CASES))
def test_bad_tls_flags_at_start_are_one_line_and_nothing_is_made(tmp_path: Path, case: str) -> None:
    paths = _files(tmp_path, PublicCA(tmp_path / "ca"))
    (cert, key), expected = START_CASES[case]
    data = tmp_path / "broker"
    flags = ["--tls-cert", str(paths[cert])] if cert else []
    flags += ["--tls-key", str(paths[key])] if key else []
    done = broker_cli(
        "serve", "--data", str(data), "--https", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", *flags
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("allowhelp-broker: error: "), done.stderr
    assert expected in lines[0], lines[0]
    assert not data.exists()  # no CA, no database: nothing half-made
