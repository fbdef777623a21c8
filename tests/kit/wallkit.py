"""Helpers for the console and web-wall tests: logged-in clients, WebSockets, raw TLS."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from allowhelp.broker.auth import totp
from harness import Broker

COOKIE = "__Host-allowhelp"


@dataclass
class Console:
    """A logged-in user's HTTP client (sync) with the CSRF header set."""

    broker: Broker
    client: httpx.Client
    csrf: str
    username: str

    @classmethod
    def login(
        cls, broker: Broker, username: str, password: str, code: str | None = None
    ) -> Console:
        client = broker.sync_client()
        body: dict[str, Any] = {"username": username, "password": password}
        if code is not None:
            body["totp"] = code
        answer = client.post("/api/v1/login", json=body)
        assert answer.status_code == 200, answer.text
        csrf = answer.json()["csrf_token"]
        client.headers["X-CSRF-Token"] = csrf
        return cls(broker, client, csrf, username)

    @property
    def cookie(self) -> str:
        return str(self.client.cookies[COOKIE])

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def close(self) -> None:
        self.client.close()


def enrol_totp(console: Console) -> tuple[str, list[str], int]:
    """Set up TOTP through the API; the secret, the recovery codes, the step used."""
    setup = console.post("/api/v1/totp/setup")
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    now = time.time()
    done = console.post("/api/v1/totp/confirm", json={"code": totp.code_at(secret, now)})
    assert done.status_code == 200, done.text
    return secret, done.json()["recovery_codes"], totp.step_at(now)


def ws_url(broker: Broker, path: str) -> str:
    return broker.url.replace("https://", "wss://") + path


async def ws_connect(
    broker: Broker, path: str, *, origin: str | None, cookie: str | None, **kwargs: Any
) -> ClientConnection:
    """Open a WebSocket exactly as told: no Origin unless given, no cookie unless given."""
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    return await websockets.connect(
        ws_url(broker, path),
        ssl=broker.ssl_context(),
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=10,
        **kwargs,
    )


def raw_tls(broker: Broker, timeout: float = 20) -> ssl.SSLSocket:
    """A bare TLS socket to the console port, for requests no HTTP client would send."""
    host, _, port = broker.https.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return broker.ssl_context().wrap_socket(sock, server_hostname="localhost")


def raw_request(broker: Broker, head: bytes) -> bytes:
    """Send one raw request head and read the whole answer (the server closes)."""
    with raw_tls(broker) as conn:
        conn.sendall(head)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
