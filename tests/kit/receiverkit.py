"""A ticket system's webhook endpoint, for real: an HTTP server on 127.0.0.1 that
checks each report's signature the way docs/integrations.md tells integrators to."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = b"a shared secret for the ticket system"


@dataclass
class Receiver:
    url: str = ""
    status: int = 200  # what it answers (500: a broken ticket system)
    reports: list[dict[str, Any]] = field(default_factory=list)  # signed right, accepted
    refused: list[str] = field(default_factory=list)  # why each bad delivery was refused
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_session(self, session_id: str) -> dict[str, Any] | None:
        with self.lock:
            return next((r for r in self.reports if r["session"] == session_id), None)


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """The check an integrator writes: HMAC-SHA256 of the raw body, constant-time compare."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


@contextmanager
def receiver(secret: bytes = SECRET) -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.attempts += 1
                status = state.status
                if not verify(secret, body, self.headers.get("X-Allowhelp-Signature")):
                    state.refused.append("bad signature")
                    status = 401
                elif status == 200:
                    report = json.loads(body)
                    if self.headers.get("X-Allowhelp-Delivery") != report["session"]:
                        state.refused.append("delivery id is not the session")
                    state.reports.append(report)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/allowhelp"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
