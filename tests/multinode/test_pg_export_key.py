"""``audit export --store`` refuses a table whose primary key on ``seq`` was dropped,
as ``verify`` does (``pg_reader.py``): its pages ask for the seqs after the last one
read, so a second row numbered like a page's last record would be left out unseen.

A real PostgreSQL, the real ``allowhelp-broker`` command line.
"""

from __future__ import annotations

import json

import psycopg

from allowhelp.broker.audit.pg_chain import PgAuditLog
from allowhelp.broker.model.database import PostgresUrl
from harness import broker_cli

RECORDS = 5


def test_an_export_of_a_table_without_its_primary_key_is_refused_in_one_line(
    pg_url: str,
) -> None:
    audit = PgAuditLog.open_url(PostgresUrl.parse(pg_url))
    try:
        for n in range(RECORDS):
            audit.append("auth.login.ok", actor=f"user{n}", target="console", details={"n": n})
    finally:
        audit.close()
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3, 4, 5]

    with psycopg.connect(pg_url, autocommit=True) as conn:  # the table's owner can
        conn.execute("ALTER TABLE audit DROP CONSTRAINT audit_pkey")
        conn.execute(
            "INSERT INTO audit SELECT seq, ts, type, code, 'mallory', target, details,"
            " prev_hash, hash FROM audit WHERE seq = 3"
        )
    for extra in ((), ("--after", "2")):
        done = broker_cli("audit", "export", "--store", pg_url, *extra)
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(errors) == 1, done.stderr
        assert errors[0].startswith(
            "allowhelp-broker: error: the audit table has no primary key on seq (it was "
            "dropped): two records could share a seq unseen, so the chain cannot be "
            "verified or exported; restore the key (ALTER TABLE audit ADD PRIMARY KEY (seq))"
        ), errors[0]
        assert done.stdout == ""  # not one record: none of a page that could hide one
        assert "Traceback" not in done.stderr and "pg secret" not in done.stderr

    # verify says the same; head still answers (one look-up, no page)
    done = broker_cli("audit", "verify", "--store", pg_url, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 1 and "no primary key on seq" in answer["problem"]
    done = broker_cli("audit", "head", "--store", pg_url)
    assert done.returncode == 0 and done.stdout.startswith(f"{RECORDS}:"), done.stderr

    with psycopg.connect(pg_url, autocommit=True) as conn:  # the copy gone, the key back
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        conn.execute("DELETE FROM audit WHERE actor = 'mallory'")
        conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_update")
        conn.execute("ALTER TABLE audit ADD PRIMARY KEY (seq)")
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == RECORDS, done.stderr
