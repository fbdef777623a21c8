"""``serve --metrics HOST:PORT``: Prometheus text on a listener of its own, scraped for real.

A real broker and agent; a technician opens a consented shell, types, and
leaves. The scrape after moves each counter by exactly what happened: one
start, one grant (and its latency), one end with its reason, the session's
own byte counts, and as many audit records as the chain grew by. A denial, a
garbage handshake on the tunnel port and a refused audit record move theirs.
A port in use is one line and exit 2 at start-up.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from allowhelp.broker.audit.chain import AuditRecord
from allowhelp.broker.node.metrics import BrokerMetrics
from allowhelp.broker.tunnel.agents import AgentRegistry
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    audit_locked,
    broker_cli,
    running_fleet,
    wait_for,
    wait_pending,
)
from terminalkit import Terminal, consented_shell

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(broker: Broker) -> Samples:
    answer = httpx.get(f"http://{broker.info['metrics']}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def head_seq(broker: Broker) -> int:
    done = broker_cli("audit", "head", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split(":")[0])


def quiet_scrape(broker: Broker) -> tuple[int, Samples]:
    """A scrape with the chain's length, taken while no record went in meanwhile."""

    def attempt() -> tuple[int, Samples] | None:
        first = head_seq(broker)
        samples = scrape(broker)
        return (first, samples) if head_seq(broker) == first else None

    found: tuple[int, Samples] = wait_for(attempt, 20, "a quiet moment to scrape")
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    root = tmp_path_factory.mktemp("metrics")
    with running_fleet(root, broker_args=("--metrics", "127.0.0.1:0")) as (_, broker, agent):
        yield broker, agent


@pytest.fixture
def desk(setup: tuple[Broker, Agent]) -> Iterator[Desk]:
    desk = Desk.login(setup[0], TECH, TECH_PW)
    yield desk
    desk.close()


async def test_a_shell_session_moves_each_counter_by_what_it_did(
    setup: tuple[Broker, Agent], desk: Desk
) -> None:
    broker, agent = setup
    seq_before, before = await asyncio.to_thread(quiet_scrape, broker)
    assert value(before, "allowhelp_agents_online") == 1
    assert value(before, "allowhelp_tunnel_handshakes_total", result="succeeded") >= 1
    session_id = await asyncio.to_thread(consented_shell, desk, agent)
    during = await asyncio.to_thread(scrape, broker)
    assert value(during, "allowhelp_sessions_active", kind="shell") == (
        value(before, "allowhelp_sessions_active", kind="shell") + 1
    )
    async with websockets.connect(
        desk.ws_url(session_id),
        ssl=broker.ssl_context(),
        origin=broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as ws:
        term = Terminal(ws)
        await term.send("echo metrics-$((6*7))\n")
        await term.expect(b"metrics-42")
    ended = await asyncio.to_thread(desk.wait_state, session_id, "ended")
    seq_after, after = await asyncio.to_thread(quiet_scrape, broker)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("allowhelp_sessions_started_total", kind="shell") == 1
    assert moved("allowhelp_sessions_started_total", kind="screen") == 0
    assert moved("allowhelp_consent_decisions_total", outcome="granted") == 1
    assert moved("allowhelp_consent_seconds_count") == 1
    reason = str(ended["end_reason"])
    assert moved("allowhelp_sessions_ended_total", kind="shell", reason=reason) == 1
    assert value(after, "allowhelp_sessions_active", kind="shell") == value(
        before, "allowhelp_sessions_active", kind="shell"
    )
    # Relay bytes: folded in at the end, exactly the session's own counts.
    assert ended["bytes_to_agent"] > 0 and ended["bytes_from_agent"] > 0
    assert (
        moved("allowhelp_relay_bytes_total", kind="shell", direction="to_agent")
        == (ended["bytes_to_agent"])
    )
    assert (
        moved("allowhelp_relay_bytes_total", kind="shell", direction="from_agent")
        == (ended["bytes_from_agent"])
    )
    # Every record the chain took, and nothing refused.
    assert moved("allowhelp_audit_records_written_total") == seq_after - seq_before > 0
    assert moved("allowhelp_audit_write_failures_total") == 0


async def test_a_denial_a_garbage_handshake_and_a_refused_record_are_counted(
    setup: tuple[Broker, Agent], desk: Desk
) -> None:
    broker, agent = setup
    before = await asyncio.to_thread(scrape, broker)
    session_id = desk.request(agent.agent_id).json()["id"]
    await asyncio.to_thread(wait_pending, agent, session_id)
    assert agent_call(agent, "deny", session_id).returncode == 0
    await asyncio.to_thread(desk.wait_state, session_id, "denied")

    host, _, port = str(broker.info["tunnel"]).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"this is not SSH\r\n")  # then hang up mid-handshake

    def counted() -> Samples | None:
        now = scrape(broker)
        failed = value(now, "allowhelp_tunnel_handshakes_total", result="failed")
        return (
            now
            if failed > value(before, "allowhelp_tunnel_handshakes_total", result="failed")
            else None
        )

    await asyncio.to_thread(wait_for, counted, 20, "the failed handshake to be counted")
    with audit_locked(broker):
        with broker.sync_client() as client:
            login = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert login.status_code == 503
    after = await asyncio.to_thread(scrape, broker)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("allowhelp_consent_decisions_total", outcome="denied") == 1
    assert moved("allowhelp_consent_decisions_total", outcome="granted") == 0
    assert moved("allowhelp_consent_seconds_count") == 1
    assert moved("allowhelp_sessions_started_total", kind="shell") == 0
    assert moved("allowhelp_tunnel_handshakes_total", result="failed") == 1
    assert moved("allowhelp_audit_write_failures_total") >= 1
    assert value(after, "allowhelp_agents_online") == 1  # the real agent stayed


def test_only_metrics_are_served_there(setup: tuple[Broker, Agent]) -> None:
    broker, _ = setup
    base = f"http://{broker.info['metrics']}"
    assert httpx.get(base + "/", timeout=10).status_code == 404
    assert httpx.get(base + "/healthz", timeout=10).status_code == 404
    assert httpx.post(base + "/metrics", timeout=10).status_code == 404
    assert broker.info["metrics"] != broker.info["https"]


def test_a_metrics_port_in_use_is_refused_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = broker_cli(
            "serve",
            "--data",
            str(tmp_path / "broker"),
            "--https",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--metrics",
            f"127.0.0.1:{port}",
        )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"allowhelp-broker: error: --metrics: cannot listen on 127.0.0.1:{port}:"
        " Address already in use"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "broker" / "broker.json").exists()  # never announced


@pytest.mark.parametrize("flag", ["nonsense", "127.0.0.1", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_one_line(tmp_path: Path, flag: str) -> None:
    data = tmp_path / "broker"
    done = broker_cli("serve", "--data", str(data), "--metrics", flag)
    assert done.returncode == 2
    assert done.stderr.startswith("allowhelp-broker: error: --metrics")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not data.exists()


def test_metrics_are_off_by_default(broker: Broker) -> None:
    assert broker.info["metrics"] is None


# --- the counting rules, without I/O --------------------------------------------------


class _Handshakes:
    handshakes_succeeded = 3
    handshakes_failed = 2


def _record(seq: int, type: str, target: str, **details: Any) -> AuditRecord:
    return AuditRecord(seq, "ts", type, "AH0000", "system", target, details, "p", "h")


def test_each_broker_counts_in_a_registry_of_its_own() -> None:
    first = BrokerMetrics(AgentRegistry(), _Handshakes())
    second = BrokerMetrics(AgentRegistry(), _Handshakes())  # the default registry would refuse
    first.committed(
        [
            _record(1, "consent.granted", "s1", kind="shell", seconds_to_decide=2.5),
            _record(2, "session.started", "s1", kind="shell"),
            _record(
                3,
                "session.ended",
                "s1",
                kind="shell",
                end_reason="user",
                bytes_to_agent=10,
                bytes_from_agent=20,
            ),
            _record(4, "session.ended", "s2", kind="tea", end_reason="made-up"),
        ]
    )
    first.refused(2)
    mine = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in first.registry.collect()
        for s in family.samples
    }
    assert mine[("allowhelp_audit_records_written_total", frozenset())] == 4
    assert mine[("allowhelp_audit_write_failures_total", frozenset())] == 2
    assert mine[("allowhelp_consent_seconds_sum", frozenset())] == 2.5
    assert mine[("allowhelp_sessions_active", frozenset({("kind", "shell")}))] == 0
    ended = ("allowhelp_sessions_ended_total", frozenset({("kind", "shell"), ("reason", "user")}))
    assert mine[ended] == 1
    unknown = (
        "allowhelp_sessions_ended_total",
        frozenset({("kind", "other"), ("reason", "other")}),
    )
    assert mine[unknown] == 1  # strange values stay one series, never a new label per value
    relayed = (
        "allowhelp_relay_bytes_total",
        frozenset({("kind", "shell"), ("direction", "from_agent")}),
    )
    assert mine[relayed] == 20
    handshakes = ("allowhelp_tunnel_handshakes_total", frozenset({("result", "failed")}))
    assert mine[handshakes] == 2
    theirs = {s.name: s.value for family in second.registry.collect() for s in family.samples}
    assert theirs["allowhelp_audit_records_written_total"] == 0
