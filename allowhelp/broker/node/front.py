"""The broker's HTTP listeners (``server.py`` wires them): the console's uvicorn on
its TLS socket, the metrics exporter on its own, both bound before anything is
announced, and uvicorn without its own signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.console.httpguard import GuardedHttpProtocol
from allowhelp.broker.console.wall import Wall
from allowhelp.broker.listen import bind
from allowhelp.broker.node.metrics import BrokerMetrics, metrics_app
from allowhelp.broker.node.tls import ConsoleTLS
from allowhelp.broker.relay.fastws import ShortcutWebSocketProtocol
from allowhelp.broker.settings import BrokerSettings, format_hostport
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.listener import TunnelListener
from allowhelp.certs.pki import BrokerPKI

log = logging.getLogger(__name__)


class Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the broker stops both halves itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_front(settings: BrokerSettings) -> tuple[socket.socket, socket.socket | None]:
    """The console's socket and, with ``--metrics``, the metrics one: both bound
    before anything is announced (a port in use is one line at start-up)."""
    https_sock = bind(settings.https_host, settings.https_port)
    try:
        metrics_sock = bind(*settings.metrics) if settings.metrics else None
    except ValueError as exc:
        https_sock.close()
        raise ValueError(f"--metrics: {exc}") from None
    return https_sock, metrics_sock


def close_sockets(https_sock: socket.socket, metrics_sock: socket.socket | None) -> None:
    https_sock.close()
    if metrics_sock is not None:
        metrics_sock.close()


def address_of(sock: socket.socket | None) -> str | None:
    if sock is None:
        return None
    host, port = sock.getsockname()[:2]
    return format_hostport(str(host), int(port))


async def started(server: Uvicorn, serving: asyncio.Task[None]) -> None:
    """uvicorn has no start event; poll its flag, and surface a start-up failure."""
    for _ in range(1000):
        if server.started:
            return
        if serving.done():
            serving.result()
            raise RuntimeError("the HTTPS server stopped during start-up")
        await asyncio.sleep(0.01)
    raise RuntimeError("the HTTPS server did not start within 10 s")


def console_config(
    app: Wall, pki: BrokerPKI, tls: ConsoleTLS, trusted_proxies: tuple[str, ...]
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # uvicorn needs a file to know it speaks TLS; the context is ours
        # (node/tls.py: the admin's certificate, renewed on SIGHUP).
        ssl_certfile=str(pki.tls_cert),
        ssl_keyfile=str(pki.tls_key),
        ssl_context_factory=lambda _config, _default: tls.context,
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For/-Proto only from the reverse proxies the admin named
        # (uvicorn takes the last address that is not one of them): login
        # throttling and the audit then see the client, not the proxy.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies) or None,
        http=GuardedHttpProtocol,  # deadlines and a size cap for request heads
        ws=ShortcutWebSocketProtocol,  # websockets-sansio, keystrokes without a task hop
        ws_max_size=1024 * 1024,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )


def counted_metrics(
    audit: AuditLog, agents: AgentRegistry, tunnel: TunnelListener
) -> BrokerMetrics:
    metrics = BrokerMetrics(agents, tunnel)
    audit.observe(metrics)  # before broker.started: counts from the first record on
    return metrics


@dataclass
class Exporter:
    """The metrics listener: plain HTTP, a uvicorn of its own on its own socket."""

    server: Uvicorn
    serving: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await self.serving
        except Exception:  # stopping: say it, and go on closing the rest
            log.exception("the metrics listener failed")


async def serve_metrics(
    metrics: BrokerMetrics | None, sock: socket.socket | None
) -> Exporter | None:
    if metrics is None or sock is None:
        return None
    config = uvicorn.Config(
        metrics_app(metrics.registry),
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        http=GuardedHttpProtocol,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = Uvicorn(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await started(server, serving)
    log.info("metrics at http://%s/metrics", address_of(sock))
    return Exporter(server, serving)
