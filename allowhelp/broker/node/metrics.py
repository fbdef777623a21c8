"""Prometheus metrics, on a listener of their own (``serve --metrics HOST:PORT``).

Off by default. The text format at ``GET /metrics`` on plain HTTP: bind it to
loopback or the monitoring network, never the technicians' side. The metrics
live in a registry of this broker's own, not prometheus_client's global one,
so several brokers in one process (tests) keep their counts apart.

Where each number comes from, so that none costs the hot paths anything:

* the session, consent and audit counters follow the **audit log**: the node
  registers ``BrokerMetrics`` as an observer of every commit
  (``AuditLog.observe``), so each counts what the chain holds, in the same
  order, and a refused record counts as a write failure and nothing else;
* relay bytes are folded in **at a session's end**, from the byte counts its
  ``session.ended`` record carries (the relays' ``Traffic``): a running
  session's bytes appear when it ends, and the relay loop does no extra work;
* agents online and tunnel handshakes are read **at scrape time** from the
  agent registry and the tunnel listener's two counters.

No room below ``node`` imports this module: they are observed, not told.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from allowhelp.broker.audit.chain import AuditRecord
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.protocol.kinds import END_REASONS, KINDS

log = logging.getLogger(__name__)

OUTCOMES = ("granted", "denied", "expired")
DIRECTIONS = ("to_agent", "from_agent")
# How long people take to click: most within seconds, the rest up to the timeout.
CONSENT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0)
OTHER = "other"  # a label value the broker does not know stays one series

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HandshakeCounts(Protocol):
    """What ``TunnelListener`` counts as handshakes end."""

    @property
    def handshakes_succeeded(self) -> int: ...

    @property
    def handshakes_failed(self) -> int: ...


class BrokerMetrics:
    """The broker's metrics; an ``AuditObserver`` (``audit/log.py``)."""

    def __init__(self, agents: AgentRegistry, tunnel: HandshakeCounts) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        Gauge(
            "allowhelp_agents_online", "Agents with a live tunnel now.", registry=registry
        ).set_function(agents.count)
        self._active = Gauge(
            "allowhelp_sessions_active",
            "Sessions consented to and not ended yet.",
            ["kind"],
            registry=registry,
        )
        self._started = Counter(
            "allowhelp_sessions_started",
            "Sessions whose channel was opened (session.started records).",
            ["kind"],
            registry=registry,
        )
        self._ended = Counter(
            "allowhelp_sessions_ended",
            "Sessions ended, by end reason (session.ended records).",
            ["kind", "reason"],
            registry=registry,
        )
        self._decisions = Counter(
            "allowhelp_consent_decisions",
            "Consent requests answered or left to expire, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._consent_seconds = Histogram(
            "allowhelp_consent_seconds",
            "Seconds the person at the PC took to allow or deny.",
            buckets=CONSENT_BUCKETS,
            registry=registry,
        )
        self._written = Counter(
            "allowhelp_audit_records_written", "Audit records committed.", registry=registry
        )
        self._failures = Counter(
            "allowhelp_audit_write_failures",
            "Audit records refused (the action they stood for was refused too).",
            registry=registry,
        )
        self._relay_bytes = Counter(
            "allowhelp_relay_bytes",
            "Bytes relayed between technicians and PCs, counted at each session's end.",
            ["kind", "direction"],
            registry=registry,
        )
        registry.register(_Handshakes(tunnel))
        self._granted: dict[str, str] = {}  # session id → kind, while active
        self._zeroes()

    def _zeroes(self) -> None:
        """Every known series from the start, at 0, so rates work from the first scrape."""
        for kind in KINDS:
            self._active.labels(kind)
            self._started.labels(kind)
            for reason in END_REASONS:
                self._ended.labels(kind, reason)
            for direction in DIRECTIONS:
                self._relay_bytes.labels(kind, direction)
        for outcome in OUTCOMES:
            self._decisions.labels(outcome)

    # AuditObserver: on the audit writer's thread, one commit at a time.

    def committed(self, records: Sequence[AuditRecord]) -> None:
        self._written.inc(len(records))
        for record in records:
            try:
                self._count(record)
            except Exception:  # a metric must never hurt the audit writer
                log.exception("metrics: audit record %d not counted", record.seq)

    def refused(self, count: int) -> None:
        self._failures.inc(count)

    def _count(self, record: AuditRecord) -> None:
        details = record.details
        kind = _known(details.get("kind"), KINDS)
        if record.type == "session.started":
            self._started.labels(kind).inc()
        elif record.type in ("consent.granted", "consent.denied", "consent.expired"):
            self._decided(record, kind)
        elif record.type == "session.ended":
            self._session_ended(record.target, kind, details)

    def _decided(self, record: AuditRecord, kind: str) -> None:
        outcome = record.type.removeprefix("consent.")
        self._decisions.labels(outcome).inc()
        seconds = record.details.get("seconds_to_decide")
        if outcome != "expired" and isinstance(seconds, int | float) and seconds >= 0:
            self._consent_seconds.observe(float(seconds))
        if outcome == "granted":
            self._granted[record.target] = kind
            self._active.labels(kind).inc()

    def _session_ended(self, session_id: str, kind: str, details: Mapping[str, object]) -> None:
        self._ended.labels(kind, _known(details.get("end_reason"), END_REASONS)).inc()
        was_active = self._granted.pop(session_id, None)
        if was_active is not None:
            self._active.labels(was_active).dec()
        for direction in DIRECTIONS:
            count = details.get(f"bytes_{direction}")
            if isinstance(count, int) and count > 0:
                self._relay_bytes.labels(kind, direction).inc(count)


def _known(value: object, known: Sequence[str]) -> str:
    return value if isinstance(value, str) and value in known else OTHER


class _Handshakes(Collector):
    """The tunnel listener's two plain counters, read at scrape time."""

    def __init__(self, tunnel: HandshakeCounts) -> None:
        self._tunnel = tunnel

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "allowhelp_tunnel_handshakes",
            "Agent SSH handshakes that ended, by result (a refused key failed).",
            labels=["result"],
        )
        family.add_metric(["succeeded"], self._tunnel.handshakes_succeeded)
        family.add_metric(["failed"], self._tunnel.handshakes_failed)
        yield family


def metrics_app(registry: CollectorRegistry) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``GET /metrics`` in the Prometheus text format; 404 for any other path."""
    exposition = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == "/metrics" and scope.get("method") in ("GET", "HEAD"):
            await exposition(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": b"not found: try /metrics\n"})

    return app
