"""A flapping agent must not drown the audit chain: the rules, the bounded
history table, and a real agent reconnecting through a link that keeps dropping."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allowhelp.broker.audit.flapping import OVERFLOW_KEY, Coalescer, FlapGate
from allowhelp.broker.store import Store
from harness import ADMIN, ADMIN_PW, Agent, Broker, Desk, Fleet, broker_cli, online, wait_for
from netkit import CuttableProxy, dial_only, port_of

WINDOW = 15.0


# --- the rules, on a clock of our own ------------------------------------------


def test_a_reboot_is_chained_record_by_record() -> None:
    gate = FlapGate(window=600, burst=2)
    assert gate.connected("pc1", "10.0.0.5:4000", 0, 1000) == (True, None)
    assert gate.disconnected("pc1", 3600, 4600) == (True, None)
    assert gate.connected("pc1", "10.0.0.5:4001", 3700, 4700) == (True, None)
    assert gate.due(10_000) == [] and not gate.flapping("pc1")


def test_a_flapping_agent_gets_one_summary_per_window() -> None:
    gate = FlapGate(window=600, burst=2)
    chained, summaries = 0, []
    now = 0.0
    for _ in range(300):  # a connect and a disconnect every 2 s for 10 minutes
        ok, summary = gate.connected("pc1", "10.0.0.5:4000", now, 1e9 + now)
        chained += ok
        summaries += [summary] if summary else []
        ok, summary = gate.disconnected("pc1", now + 1, 1e9 + now + 1)
        chained += ok
        summaries += [summary] if summary else []
        now += 2
    assert chained == 4  # two connects and their disconnects, then it flaps
    assert [s.state for s in summaries] == ["started"]  # 598 s < one window
    started = summaries[0]
    assert (started.connects, started.disconnects) == (3, 2)
    summaries += gate.due(now + 10)  # a window after "started": one "ongoing"
    assert [s.state for s in summaries] == ["started", "ongoing"]
    assert gate.due(now + 11) == []  # nothing new to say
    settled = gate.due(now + 601)  # quiet for a whole window
    assert [s.state for s in settled] == ["settled"]
    # Every connect and disconnect is chained one by one or counted in a summary
    # ("started" counts its whole window, the chained ones included).
    assert sum(s.connects for s in summaries + settled) == 300
    assert sum(s.disconnects for s in summaries + settled) == 300
    assert not gate.flapping("pc1")
    assert gate.connected("pc1", "10.0.0.5:4000", now + 700, 0) == (True, None)


def test_refusals_are_coalesced_per_address_and_bounded_overall() -> None:
    refusals = Coalescer(window=600, max_keys=100)
    chained = [refusals.hit("198.51.100.7", "Login timeout expired", i, i) for i in range(1000)]
    assert chained.count("198.51.100.7") == 1 and chained.count(None) == 999
    tally = refusals.due(600)
    assert [(t.key, t.count, t.reasons) for t in tally] == [
        ("198.51.100.7", 999, {"Login timeout expired": 999})
    ]
    # 10,000 addresses (an IPv6 /64 rotating): 100 get their own record, the
    # rest share one, and the tally says how many addresses were behind it.
    keys = [refusals.hit(f"2001:db8::{n:x}", "reset", 700, 700) for n in range(10_000)]
    assert sum(k is not None for k in keys) == 101 and keys[100] == OVERFLOW_KEY
    tallies = {t.key: t for t in refusals.flush()}
    assert tallies[OVERFLOW_KEY].count == 9_899 and tallies[OVERFLOW_KEY].keys == 9_900


def test_the_history_table_is_bounded_per_agent_and_in_age(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "broker.sqlite3")
    try:
        now = time.time()
        for i in range(500):
            store.record_connectivity("pc1", "connected", f"10.0.0.5:{i}", "", now + i, keep=200)
        store.record_connectivity("pc2", "connected", "10.0.0.6:1", "", now - 40 * 86400)
        events = store.connectivity("pc1", limit=1000)
        assert len(events) == 200 and events[0].remote == "10.0.0.5:499"
        assert events[-1].remote == "10.0.0.5:300"
        assert store.prune_connectivity(now) == 1  # pc2's 40-day-old row
        assert store.connectivity("pc2") == []
    finally:
        store.close()


# --- a real agent on a link that drops again and again ---------------------------


def export(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def flappy(tmp_path: Path) -> Iterator[tuple[Broker, Agent, CuttableProxy, Desk]]:
    fleet = Fleet(tmp_path)
    proxy: CuttableProxy | None = None
    try:
        broker = fleet.broker(extra=["--audit-coalesce", str(WINDOW)]).start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        agent = fleet.agent()
        assert agent.enroll(broker.token()).returncode == 0
        proxy = CuttableProxy(port_of(broker.tunnel))
        proxy.restore()
        dial_only(proxy, agent.config)  # each flap is a reconnect through the proxy
        agent.start("--reconnect-cap", "1")
        wait_for(lambda: online(broker, agent.agent_id), 20, "the agent online through the link")
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        yield broker, agent, proxy, admin
        admin.close()
    finally:
        if proxy is not None:
            proxy.close()
        fleet.close()


def test_thirty_reconnects_give_a_bounded_chain_and_a_full_history(
    flappy: tuple[Broker, Agent, CuttableProxy, Desk],
) -> None:
    broker, agent, proxy, admin = flappy
    path = f"/api/v1/agents/{agent.agent_id}/connectivity"

    def history() -> dict[str, Any]:
        answer: dict[str, Any] = admin.client.get(path, params={"limit": 200}).json()
        return answer

    def connects() -> int:
        return sum(e["event"] == "connected" for e in history()["history"])

    flaps = 30
    started = time.monotonic()
    for n in range(flaps):
        proxy.cut()
        proxy.restore()
        wait_for(lambda n=n: connects() >= n + 2, 20, f"reconnect {n + 1}", step=0.1)  # type: ignore[misc]
    took = time.monotonic() - started
    seen = history()
    assert seen["online"] is True and time.time() - seen["last_seen"] < 5
    assert seen["connects_last_hour"] == flaps + 1
    assert seen["disconnects_last_hour"] == flaps
    assert all(e["remote"].startswith("127.0.0.1:") for e in seen["history"])

    def mine(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [r for r in records if r["type"] == kind and r["target"] == agent.agent_id]

    # Quiet for a whole window: the broker says so once, with the agent online.
    wait_for(
        lambda: any(
            r["details"]["state"] == "settled" for r in mine(export(broker), "agent.flapping")
        ),
        WINDOW * 3,
        "the settled summary",
        step=0.5,
    )
    records = export(broker)
    connected = mine(records, "agent.connected")
    disconnected = mine(records, "agent.disconnected")
    flapping = mine(records, "agent.flapping")
    assert len(connected) == 2 and len(disconnected) == 2  # the burst, one by one
    assert connected[0]["details"]["remote"].startswith("127.0.0.1:")
    states = [r["details"]["state"] for r in flapping]
    assert states[0] == "started" and states[-1] == "settled"
    assert len(flapping) <= 2 + int(took // WINDOW) + 1  # one per window, not one per flap
    assert flapping[-1]["details"]["online"] is True
    # Every connect is accounted for: chained one by one, or counted in a summary.
    assert sum(r["details"]["connects"] for r in flapping) == flaps + 1
    assert sum(r["details"]["disconnects"] for r in flapping) == flaps
    agent_records = len(connected) + len(disconnected) + len(flapping)
    print(f"{2 * flaps + 1} connects and disconnects in {took:.1f} s: {agent_records} records")
    assert broker.stop() == 0
    done = broker_cli("audit", "verify", "--data", str(broker.data))
    assert done.returncode == 0, done.stdout + done.stderr


def test_failed_handshakes_are_logged_with_the_address_and_coalesced(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        broker = fleet.broker(extra=["--audit-coalesce", "3"]).start()
        port = port_of(broker.tunnel)
        for source, times in (("127.0.0.7", 40), ("127.0.0.8", 4)):
            for _ in range(times):  # not SSH at all: a scanner, or a cut mid-handshake
                with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")

        def refused() -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {}
            for r in export(broker):
                if r["type"] == "tunnel.refused":
                    found.setdefault(r["target"], []).append(r)
            return found

        def tallied() -> bool:
            found = refused()
            return all(len(found.get(a, [])) == 2 for a in ("127.0.0.7", "127.0.0.8"))

        wait_for(tallied, 30, "one record and one tally per address", step=0.2)
        found = refused()
        for address, times in (("127.0.0.7", 40), ("127.0.0.8", 4)):
            first, tally = found[address]
            assert first["details"]["count"] == 1 and first["details"]["remote"].startswith(
                f"{address}:"
            )
            assert tally["details"]["coalesced"] is True
            assert tally["details"]["count"] == times - 1
            assert sum(tally["details"]["reasons"].values()) == times - 1
        log = broker.log.read_text()
        warned = [line for line in log.splitlines() if "tunnel handshake failed" in line]
        assert len([w for w in warned if "WARNING" in w and "from 127.0.0.7:" in w]) == 1
        assert "tunnel.refused: 39 more from 127.0.0.7" in log
    finally:
        fleet.close()
