"""The store's methods on both back ends: SQLite (the default) and PostgreSQL.

The same calls, the same answers: the SQL written once in the dialect both
speak (``store/database.py``), with PostgreSQL's schema (``pg_migrations.py``)
meaning what SQLite's does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from allowhelp.broker.errors import Conflict, StoreError
from allowhelp.broker.model.database import PostgresUrl, parse_store
from allowhelp.broker.model.records import AgentRecord, HelpTicket
from allowhelp.broker.model.session import Session, State
from allowhelp.broker.store import Store
from allowhelp.broker.store.core import StorePlace


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> StorePlace:
    if request.param == "sqlite":
        return tmp_path / "broker.sqlite3"
    return PostgresUrl.parse(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(place: StorePlace) -> Iterator[Store]:
    opened = Store.open(place)
    try:
        yield opened
    finally:
        opened.close()


def _agent(agent_id: str = "a1") -> AgentRecord:
    return AgentRecord(agent_id, "ssh-ed25519 KEY" + agent_id, "pc1", "Linux", "ann", "1.0",
                       time.time(), None, False)  # fmt: skip


def test_a_user_name_is_taken_once(store: Store) -> None:
    user = store.add_user("ann", "Ann", "technician", "hash")
    assert store.user_by_name("ann") == user
    assert user.disabled is False
    with pytest.raises(Conflict, match="already exists"):
        store.add_user("ann", "Ann again", "admin", "hash")
    assert store.count_users() == 1


def test_a_single_use_token_enrols_once(store: Store) -> None:
    """What enrolment calls (``tunnel/enrolment.py``): the check spends nothing; the
    enrolment spends a use and keeps the key in one transaction, or neither."""
    now = time.time()
    store.add_enrol_token("h" * 64, now + 60, 1, "admin")
    first, second = _agent("a1"), _agent("a2")
    assert store.enrol_refusal("h" * 64, "a1", now) is None
    assert store.enrol_refusal("h" * 64, "a2", now) is None  # both checked: none spent
    assert store.enrol_agent("h" * 64, now, first) is None
    assert store.enrol_agent("h" * 64, now, second) == "used"  # the race's loser
    assert [a.id for a in store.agents()] == ["a1"]
    stored = store.agent("a1")
    assert stored is not None and (stored.public_key, stored.enrolled) == (
        first.public_key,
        first.enrolled,
    )  # as enrolment reads it back after a lost COMMIT answer
    assert store.enrol_tokens()[0].uses_left == 0
    assert store.enrol_refusal("h" * 64, "a2", now) == "used"
    store.add_enrol_token("k" * 64, now + 60, 5, "admin")
    assert store.enrol_refusal("k" * 64, "a1", now) == "key_taken"
    assert store.enrol_agent("k" * 64, now, first) == "key_taken"
    assert {t.uses_left for t in store.enrol_tokens()} == {0, 5}  # a refusal spends nothing
    assert store.enrol_refusal("x" * 64, "a3", now) == "unknown"
    assert store.enrol_agent("x" * 64, now, _agent("a3")) == "unknown"
    assert store.enrol_refusal("k" * 64, "a3", now + 120) == "expired"
    assert [a.id for a in store.agents()] == ["a1"]


def test_a_revoked_token_expires_no_later_than_now(store: Store) -> None:
    now = time.time()
    store.add_enrol_token("r" * 64, now + 3600, 5, "admin")
    assert store.revoke_enrol_token("r" * 12, now) is True
    assert store.revoke_enrol_token("r" * 12, now) is False  # once
    assert store.enrol_refusal("r" * 64, "a1", now) == "expired"
    assert store.enrol_agent("r" * 64, now, _agent("a1")) == "expired"
    assert store.agents() == []


def test_a_help_code_asked_again_replaces_the_first(store: Store) -> None:
    store.upsert_agent(_agent())
    now = time.time()
    store.add_help_request(HelpTicket("123456", "a1", "pc1", "first", now, now + 60))
    store.use_help_request("123456", "s1")
    store.add_help_request(HelpTicket("123456", "a1", "pc1", "second", now, now + 90))
    ticket = store.help_request("123456")
    assert ticket is not None
    assert (ticket.message, ticket.expires, ticket.session_id) == ("second", now + 90, None)


def test_a_report_is_queued_once_and_bytes_come_back(store: Store) -> None:
    now = time.time()
    store.queue_report("s1", b"\x00body\xff", now)
    store.queue_report("s1", b"other", now)
    [item] = store.due_reports(now + 1)
    assert item.body == b"\x00body\xff"
    assert store.next_report_due() == now


def test_a_totp_step_is_taken_once(store: Store) -> None:
    user = store.add_user("bob", "Bob", "admin", "hash")
    store.set_totp_pending(user.id, "SECRET")
    assert store.activate_totp(user.id, "SECRET", 100, ["c1", "c2"]) is True
    assert store.use_totp_step(user.id, 101, range(90, 200)) is True
    assert store.use_totp_step(user.id, 101, range(90, 200)) is False
    assert store.recovery_codes_left(user.id) == 2


def test_connectivity_keeps_the_last_rows_and_counts_them(store: Store) -> None:
    store.upsert_agent(_agent())
    now = time.time()
    for i in range(5):
        store.record_connectivity("a1", "connected", "127.0.0.1", "", now + i, keep=3)
    assert store.connectivity_counts("a1", now - 1) == {"connected": 3, "disconnected": 0}
    agent = store.agent("a1")
    assert agent is not None and agent.last_seen == now + 4


def test_a_session_over_is_never_open_again(store: Store) -> None:
    """A node cut off from the database may owe an older state of a session another
    node has ended meanwhile: writing it late does not reopen the row (#21)."""
    opened = Session("s1", "agent", "pc", "tech", "Tech", "shell", "why", "p")
    active = dataclasses.replace(opened, state=State.ACTIVE)
    ended = dataclasses.replace(opened, state=State.ENDED, end_reason="broker_restart")
    store.save_session(active)
    store.save_session(ended)
    store.save_session(active)  # the late, older state
    found = store.session("s1")
    assert found is not None and found.state is State.ENDED
    assert [s.id for s in store.open_sessions()] == []
    store.save_session(dataclasses.replace(ended, notes="printer fixed"))  # final to final
    again = store.session("s1")
    assert again is not None and again.notes == "printer fixed"


def test_the_reader_lane_refuses_writes(place: StorePlace, store: Store) -> None:
    reader = Store.open(place, read_only=True)
    try:
        with pytest.raises(StoreError):
            reader.add_user("eve", "Eve", "admin", "hash")
        assert reader.user_by_name("eve") is None
    finally:
        reader.close()


def test_both_schemas_have_the_same_columns(tmp_path: Path, pg_url: str) -> None:
    """pg_migrations.py means what migrations.py means: every table and column."""
    import sqlite3

    Store.open(tmp_path / "b.sqlite3").close()
    Store.open(PostgresUrl.parse(pg_url)).close()
    lite = sqlite3.connect(tmp_path / "b.sqlite3")
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    want = {(t, c[1]) for t in tables for c in lite.execute(f"PRAGMA table_info({t})")}
    with psycopg.connect(pg_url) as conn:
        got = set(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> 'schema_version'"
        ).fetchall())  # fmt: skip
    # A SQLite migration not yet ported to pg_migrations.py fails here: port it.
    assert got == want


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    url = PostgresUrl.parse(pg_url)
    Store.open(url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StoreError, match="newer than this allowhelp"):
        Store.open(url)


def test_an_unreachable_database_is_one_clear_error() -> None:
    url = PostgresUrl.parse("postgresql://u:topsecret@127.0.0.1:1/db")
    with pytest.raises(StoreError, match="cannot reach the database") as caught:
        Store.open(url)
    assert "topsecret" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mysql://h/db", "must be a postgresql://"),
        ("postgresql://h:5432", "names no database"),
        ("postgresql://h:port/db", "not a URL"),
        ("postgresql://u:pa\uff0fTopSecret@h/db", "not a URL"),  # fullwidth "/"
    ],
)
def test_a_bad_store_url_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_store(text)
    assert "TopSecret" not in str(caught.value)


def test_placeholders_are_spelt_once_for_psycopg() -> None:
    from allowhelp.broker.store.postgres_db import pg_args, pg_sql

    sql = "SELECT coalesce(a, '?'), '50%' FROM t WHERE x = ? AND y LIKE 'it''s?%' AND z = ?"
    assert pg_sql(sql) == (
        "SELECT coalesce(a, '?'), '50%%' FROM t WHERE x = %s AND y LIKE 'it''s?%%' AND z = %s"
    )
    assert pg_args((True, False, 3, "x", None)) == (1, 0, 3, "x", None)


def test_a_store_url_never_shows_its_password() -> None:
    url = PostgresUrl.parse("postgresql://ah:s3cret@[::1]:5433/allowhelp?sslmode=require")
    assert str(url) == "postgresql://ah:***@[::1]:5433/allowhelp?sslmode=require"
    assert "s3cret" not in repr(str(url))
    assert str(PostgresUrl.parse("postgresql:///allowhelp")) == "postgresql:///allowhelp"


def test_the_client_keys_password_is_hidden_too() -> None:
    """libpq's ``sslpassword`` unlocks the client's key: a secret like the password
    (a backup's audit record and syslog line print the store's URL)."""
    url = PostgresUrl.parse("postgresql://ah:pw@db/allowhelp?sslmode=verify-full&sslpassword=K3y")
    assert str(url) == "postgresql://ah:***@db/allowhelp?sslmode=verify-full&sslpassword=***"
    alone = PostgresUrl.parse("postgresql://ah@db/allowhelp?sslpassword=K3y")
    assert "K3y" not in str(alone) and "sslpassword=***" in str(alone)


def test_a_password_given_as_a_parameter_is_hidden_and_taken_apart_too() -> None:
    """``?password=`` is as much a password as ``user:password@``: hidden in what is
    shown (logs, audit details, messages) and handed to clients apart (PGPASSWORD),
    never left in the URL a command line would carry."""
    url = PostgresUrl.parse("postgresql://ah@db:5432/allowhelp?password=s3cret&sslmode=require")
    assert "s3cret" not in str(url)
    assert str(url) == "postgresql://ah@db:5432/allowhelp?sslmode=require&password=***"
    assert url.without_password() == ("postgresql://ah@db:5432/allowhelp?sslmode=require", "s3cret")
    quoted = PostgresUrl.parse("postgresql://ah:s3cr%40t@db/allowhelp")
    assert quoted.without_password() == ("postgresql://ah@db/allowhelp", "s3cr@t")
    assert PostgresUrl.parse("postgresql://db/allowhelp").without_password()[1] is None
