"""``audit verify`` and ``audit export`` on PostgreSQL read the chain in pages.

psycopg's client cursor holds a query's whole result: one ``SELECT`` of the chain
held all of it. The reader now asks for :data:`pg_reader.PAGE` records a query
(keyset on seq); here the page is made small, the chain several pages long, and
what a walk and an export answer is compared with a one-page read of the same
chain, on a real PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from allowhelp.broker.audit import pg_reader
from allowhelp.broker.audit.chain import GENESIS_HASH, SELECT_SQL, read_records, verify
from allowhelp.broker.audit.pg_chain import PgAuditLog
from allowhelp.broker.audit.pg_reader import PgReader
from allowhelp.broker.errors import AuditCorrupt
from allowhelp.broker.model.database import PostgresUrl

PAGE = 7
RECORDS = 45  # six full pages and a short one


class Reads:
    """Each chain read the reader sends, and how many rows its answer holds."""

    def __init__(self) -> None:
        self.rows: list[int] = []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    execute = PgReader.execute

    def counted(self: PgReader, sql: str, args: tuple[Any, ...] = (), /) -> psycopg.Cursor[Any]:
        cursor = execute(self, sql, args)
        if sql.startswith(SELECT_SQL):
            seen.rows.append(cursor.rowcount)
        return cursor

    monkeypatch.setattr(PgReader, "execute", counted)
    return seen


@pytest.fixture
def chain(pg_url: str) -> PostgresUrl:
    url = PostgresUrl.parse(pg_url)
    audit = PgAuditLog.open_url(url)
    try:
        for n in range(RECORDS):
            audit.append("auth.login.ok", actor=f"user{n}", target="console", details={"n": n})
    finally:
        audit.close()
    return url


def _one_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_reader, "PAGE", 10_000)  # the whole chain in one read, as before


def test_a_chain_of_several_pages_verifies_and_exports_as_in_one_read(
    chain: PostgresUrl, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_page(monkeypatch)
    whole_walk, whole_export = verify(chain), list(read_records(chain))
    whole_tail = list(read_records(chain, after=20))
    assert reads.rows == [RECORDS, RECORDS, RECORDS - 20]
    assert whole_walk.ok and whole_walk.last_seq == RECORDS
    assert [r.seq for r in whole_export] == list(range(1, RECORDS + 1))

    monkeypatch.setattr(pg_reader, "PAGE", PAGE)
    reads.rows.clear()
    assert verify(chain) == whole_walk
    walked = list(reads.rows)
    assert list(read_records(chain)) == whole_export
    assert list(read_records(chain, after=20)) == whole_tail
    # the walk read the chain a page at a time: never more than a page held
    assert walked == [PAGE] * (RECORDS // PAGE) + [RECORDS % PAGE]
    assert max(reads.rows) == PAGE and sum(reads.rows) == 2 * RECORDS + RECORDS - 20

    # a head, an anchored start and an end fall on and off page bounds alike
    head = (whole_export[29].seq, whole_export[29].hash)
    start = (whole_export[6].seq, whole_export[6].hash)
    paged = [verify(chain, head), verify(chain, start=start), verify(chain, upto=PAGE * 3)]
    _one_page(monkeypatch)
    assert paged == [verify(chain, head), verify(chain, start=start), verify(chain, upto=PAGE * 3)]
    assert all(result.ok for result in paged)
    assert paged[1].count == RECORDS - PAGE and paged[2].last_seq == PAGE * 3


def test_a_chain_of_whole_pages_ends_without_an_empty_read(
    chain: PostgresUrl, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_reader, "PAGE", 9)  # 45 = 5 pages of 9
    assert verify(chain).last_seq == RECORDS
    assert reads.rows == [9] * 5


def test_a_record_changed_mid_second_page_is_found_at_its_seq(
    chain: PostgresUrl, reads: Reads, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    bad = PAGE + PAGE // 2 + 1  # in the middle of the second page
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a superuser gets past the trigger
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = %s", (bad,))
        conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_update")
    monkeypatch.setattr(pg_reader, "PAGE", PAGE)
    result = verify(chain)
    assert not result.ok
    assert result.first_bad_seq == bad and result.last_seq == bad - 1 and result.count == bad - 1
    assert result.problem == f"record {bad} was edited (hash mismatch)"
    assert reads.rows == [PAGE, PAGE]  # found in the second page: the rest never read
    exported = list(read_records(chain))
    assert [r.actor for r in exported if r.seq == bad] == ["mallory"]
    _one_page(monkeypatch)
    assert verify(chain) == result and list(read_records(chain)) == exported


def test_a_record_missing_across_a_page_bound_is_named(
    chain: PostgresUrl, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    gone = 2 * PAGE + 1  # the first of the third page, had it not gone
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        conn.execute("DELETE FROM audit WHERE seq = %s", (gone,))
        conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_update")
    monkeypatch.setattr(pg_reader, "PAGE", PAGE)
    result = verify(chain)
    assert result.first_bad_seq == gone and result.last_seq == gone - 1
    assert "is missing" in result.problem
    assert [r.seq for r in read_records(chain)] == [s for s in range(1, RECORDS + 1) if s != gone]


def test_an_empty_chain_walks_and_exports_nothing(pg_url: str, reads: Reads) -> None:
    url = PostgresUrl.parse(pg_url)
    PgAuditLog.open_url(url).close()
    result = verify(url)
    assert result.ok and result.last_seq == 0 and result.last_hash == GENESIS_HASH
    assert list(read_records(url)) == [] and reads.rows == []


def test_a_table_without_its_primary_key_is_refused_a_walk(
    chain: PostgresUrl, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    # The table's owner can drop the key: a second row numbered PAGE, a page's last seq,
    # would never be asked for (the next page starts after PAGE), where one read of the
    # chain met it and said the sequence jumps.
    with psycopg.connect(pg_url, autocommit=True) as conn:  # inserts pass the triggers
        conn.execute("ALTER TABLE audit DROP CONSTRAINT audit_pkey")
        conn.execute(
            "INSERT INTO audit SELECT seq, ts, type, code, 'mallory', target, details,"
            " prev_hash, hash FROM audit WHERE seq = %s",
            (PAGE,),
        )
    monkeypatch.setattr(pg_reader, "PAGE", PAGE)
    with pytest.raises(AuditCorrupt, match="the audit table has no primary key on seq"):
        verify(chain)
    _one_page(monkeypatch)
    with pytest.raises(AuditCorrupt, match="no primary key on seq"):
        verify(chain)
