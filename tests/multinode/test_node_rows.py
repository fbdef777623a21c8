"""Which node runs which session and holds which agent (store/nodes.py), on both back ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.model.session import Session
from allowhelp.broker.store import Store
from allowhelp.broker.store.core import StorePlace
from allowhelp.broker.store.nodes import NODE_STALE, NodeRecord


def _node(node_id: str) -> NodeRecord:
    return NodeRecord(node_id, "host-" + node_id, 1, "https://x", "off", 0.0, 0.0, 0.0)


def _as(place: StorePlace, node_id: str) -> Store:
    store = Store.open(place)
    store.node_id = node_id
    store.node_started(_node(node_id))
    return store


def _session(store: Store, session_id: str) -> None:
    store.save_session(Session(session_id, "agent", "pc", "tech", "Tech", "shell", "why", "p"))


@pytest.fixture
def pg_place(pg_url: str) -> PostgresUrl:
    return PostgresUrl.parse(pg_url)


@pytest.fixture
def two_nodes(pg_place: PostgresUrl) -> Iterator[tuple[Store, Store]]:
    a, b = _as(pg_place, "a" * 32), _as(pg_place, "b" * 32)
    yield a, b
    a.close()
    b.close()


def test_a_live_nodes_sessions_are_not_claimed(two_nodes: tuple[Store, Store]) -> None:
    a, b = two_nodes
    _session(a, "s-of-a")
    assert b.claim_stale_sessions(own=True) == []  # node B starting leaves A's alone
    assert [s.id for s in a.claim_stale_sessions(own=True)] == ["s-of-a"]  # A's restart


def test_a_dead_nodes_sessions_are_claimed_once(
    two_nodes: tuple[Store, Store], pg_url: str
) -> None:
    a, b = two_nodes
    _session(a, "s-of-a")
    with psycopg.connect(pg_url, autocommit=True) as conn:  # A's heartbeat stopped long ago
        conn.execute(
            "UPDATE broker_nodes SET heartbeat = heartbeat - %s WHERE id = %s",
            (NODE_STALE + 1, a.node_id),
        )
    assert [s.id for s in b.claim_stale_sessions(own=False)] == ["s-of-a"]
    assert b.claim_stale_sessions(own=False) == []  # now B's: not claimed twice
    assert a.node_heartbeat(a.node_id) is True
    assert [s.id for s in b.claim_stale_sessions(own=True)] == ["s-of-a"]  # B's own now


def _stale(pg_url: str, node_id: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # its heartbeat stopped long ago
        conn.execute(
            "UPDATE broker_nodes SET heartbeat = heartbeat - %s WHERE id = %s",
            (NODE_STALE + 1, node_id),
        )


def test_an_end_owed_while_cut_off_is_held_once(
    two_nodes: tuple[Store, Store], pg_url: str
) -> None:
    a, b = two_nodes
    _session(a, "s-taken")
    _stale(pg_url, a.node_id)
    assert [s.id for s in b.claim_stale_sessions(own=False)] == ["s-taken"]  # B ends it
    assert a.hold_late_end("s-taken") is False  # A back: B's end is the one on record
    _session(a, "s-kept")
    _stale(pg_url, a.node_id)
    assert a.hold_late_end("s-kept") is True  # A back first: still its own ...
    assert b.claim_stale_sessions(own=False) == []  # ... and its beat renewed: not B's
    assert a.hold_late_end("s-unsaved") is True  # never saved: nobody else can end it
    b.node_stopped(a.node_id)  # A's row gone (as if taken for dead and dropped)
    assert a.hold_late_end("s-kept") is None  # cannot hold anything before joining again
    assert a.hold_late_end("s-taken") is False


def test_the_node_holding_an_agent_is_known(two_nodes: tuple[Store, Store]) -> None:
    a, b = two_nodes
    a.record_connectivity("pc1", "connected", "127.0.0.1", "", 1.0)
    assert b.agent_node("pc1") == a.node_id
    b.record_connectivity("pc1", "connected", "127.0.0.1", "", 2.0)  # it came back via B
    a.record_connectivity("pc1", "disconnected", "127.0.0.1", "gone", 3.0)  # A's late news
    assert a.agent_node("pc1") == b.node_id
    b.node_stopped(b.node_id)
    assert a.agent_node("pc1") is None
    assert [n.id for n in a.nodes()] == [a.node_id]


def test_one_sqlite_file_is_one_node(tmp_path: Path) -> None:
    place = tmp_path / "broker.sqlite3"
    old = _as(place, "c" * 32)
    _session(old, "s1")
    old.close()
    new = _as(place, "d" * 32)  # a data folder restored elsewhere: another id
    try:
        assert [s.id for s in new.claim_stale_sessions(own=True)] == ["s1"]
        nodes = new.nodes()
        assert {n.id for n in nodes} == {"c" * 32, "d" * 32}
        assert all(0 <= n.age < 5 for n in nodes)  # the database's clock
    finally:
        new.close()


def test_an_older_claim_never_takes_an_agent_from_a_newer_tunnel(
    two_nodes: tuple[Store, Store],
) -> None:
    """A connect written late (A's row write failed or was held up, then done) must not
    name A as the holder of a tunnel the agent has since opened on B: B's fence would
    then drop the newer tunnel (``agents_elsewhere``)."""
    a, b = two_nodes
    b.record_connectivity("pc1", "connected", "127.0.0.1", "", 20.0)  # the newer tunnel, on B
    a.record_connectivity("pc1", "connected", "127.0.0.1", "", 10.0)  # A's older, written late
    assert a.agent_node("pc1") == b.node_id
    assert b.agents_elsewhere() == {}  # B is not told another node holds it
    assert a.agents_elsewhere() == {"pc1": b.node_id}
    a.record_connectivity("pc1", "connected", "127.0.0.1", "", 30.0)  # a newer one on A wins
    assert b.agent_node("pc1") == a.node_id
    assert b.agents_elsewhere() == {"pc1": a.node_id}


def test_an_older_claim_is_refused_on_sqlite_too(tmp_path: Path) -> None:
    store = _as(tmp_path / "broker.sqlite3", "e" * 32)
    try:
        store.record_connectivity("pc1", "connected", "127.0.0.1", "", 20.0)
        store.node_id = "f" * 32  # the same file as another node id: the late claim
        store.record_connectivity("pc1", "connected", "127.0.0.1", "", 10.0)
        assert store.agent_node("pc1") == "e" * 32
    finally:
        store.close()
