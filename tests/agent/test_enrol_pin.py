"""Enrolment pins the broker's CA by one certificate's fingerprint: a CA answer with a
second certificate after the pinned one (a man in the middle's own CA) is refused,
and a configuration that trusts more than one CA does not load.

Real parts: an HTTPS server on 127.0.0.1 answering ``GET /api/v1/enrol/ca`` (the
enrolment's first, unverified request), CAs made by the test.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from allowhelp.agent.config import CONFIG_FILE, AgentConfig
from allowhelp.agent.enrol import fetch_pinned_ca
from allowhelp.agent.errors import ConfigError, EnrolError
from allowhelp.certs.token import EnrolmentToken
from tlskit import PublicCA

PEM = serialization.Encoding.PEM


@contextmanager
def ca_answer(folder: Path, body: bytes) -> Iterator[str]:
    """An HTTPS server whose every GET answers ``body``; its URL."""
    issued = PublicCA(folder / "server-ca").issue(("127.0.0.1",))
    issued.install(folder / "cert.pem", folder / "key.pem")

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def token_for(url: str, ca_pem: bytes) -> EnrolmentToken:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(ca_pem)
    return EnrolmentToken(url, "s" * 43, cert.fingerprint(hashes.SHA256()).hex())


def test_the_pinned_ca_alone_is_taken(tmp_path: Path) -> None:
    broker_ca = PublicCA(tmp_path / "broker").root.public_bytes(PEM)
    with ca_answer(tmp_path, broker_ca) as url:
        assert fetch_pinned_ca(token_for(url, broker_ca)).encode() == broker_ca


def test_a_second_ca_after_the_pinned_one_is_refused(tmp_path: Path) -> None:
    broker_ca = PublicCA(tmp_path / "broker").root.public_bytes(PEM)
    intruder_ca = PublicCA(tmp_path / "intruder", "Intruder").root.public_bytes(PEM)
    with (
        ca_answer(tmp_path, broker_ca + intruder_ca) as url,
        pytest.raises(EnrolError, match="no usable CA certificate"),
    ):
        fetch_pinned_ca(token_for(url, broker_ca))


def test_a_configuration_trusting_two_cas_does_not_load(tmp_path: Path) -> None:
    broker_ca = PublicCA(tmp_path / "broker").root.public_bytes(PEM).decode()
    intruder_ca = PublicCA(tmp_path / "intruder", "Intruder").root.public_bytes(PEM).decode()
    config = AgentConfig("https://b", broker_ca, "f" * 64, "127.0.0.1", 2222, "key", "a-1", "ACME")
    config.save(tmp_path)
    assert AgentConfig.load(tmp_path).ca_pem == broker_ca
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    raw["ca_pem"] = broker_ca + intruder_ca
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="other than one certificate authority"):
        AgentConfig.load(tmp_path)
