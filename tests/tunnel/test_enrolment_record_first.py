"""An enrolment is recorded before it happens, and its token use and key go together.

A real broker and the real ``allowhelp-agent enroll``. The audit log is made to
fail for real (``harness.audit_locked``: a second process holds its write lock):
the enrolment is refused with a clear error and the single-use token keeps its
use, so the same token enrols the PC once the log works again. A store that
cannot be written after ``agent.enrolled`` (a second process holds the write
lock of ``broker.sqlite3``) leaves the token unspent too, and the chain says the
enrolment was aborted rather than ending at ``agent.enrolled``. A store that commits
and then fails (a COMMIT whose answer was lost) is read back: enrolled after all, or,
when it cannot be read either, aborted with ``store_outcome_unknown``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.records import AgentRecord
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.enrolment import EnrolmentDesk
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.certs.sshkeys import agent_id_for, public_key_line
from allowhelp.certs.token import secret_hash
from harness import ADMIN, ADMIN_PW, Broker, Fleet, audit_locked, broker_cli

# Holds the store's write lock until its stdin closes (WAL mode: readers still read).
_HOLD_STORE_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
    "conn.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def broker(fleet: Fleet) -> Broker:
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    return broker


@contextmanager
def store_locked(broker: Broker) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_STORE_LOCK, str(broker.data / "broker.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"locked\n", "the store's lock was not taken"
        yield
    finally:
        holder.stdin.close()
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        holder.stdout.close()


def uses_left(broker: Broker) -> list[int]:
    with closing(sqlite3.connect(broker.data / "broker.sqlite3")) as db:
        return [row[0] for row in db.execute("SELECT uses_left FROM enrol_tokens")]


def records(broker: Broker) -> list[dict[str, Any]]:
    return broker.audit_records()


def test_an_enrolment_the_log_refuses_keeps_the_token(fleet: Fleet, broker: Broker) -> None:
    token = broker.token()  # single use
    first = fleet.agent("a1")
    with audit_locked(broker):
        refused = first.enroll(token)
    assert refused.returncode == 2
    assert uses_left(broker) == [1]  # the failed record cost no use
    assert "audit log unavailable" in refused.stderr, refused.stderr
    assert "the enrolment token was not used: try again later" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (first.config / "agent.json").exists()
    assert broker.agents(ADMIN, ADMIN_PW) == []
    assert "agent.enrolled" not in broker.audit_types()
    # The log works again: the very same single-use token enrols a PC, once.
    again = fleet.agent("a2")
    done = again.enroll(token)
    assert done.returncode == 0, done.stderr
    assert uses_left(broker) == [0]
    assert [a["id"] for a in broker.agents(ADMIN, ADMIN_PW)] == [again.agent_id]
    enrolled = [r for r in records(broker) if r["type"] == "agent.enrolled"]
    assert [r["target"] for r in enrolled] == [again.agent_id]
    third = fleet.agent("a3").enroll(token)
    assert third.returncode == 2 and "already been used" in third.stderr


def test_an_enrolment_the_store_refuses_is_aborted_on_the_record(
    fleet: Fleet, broker: Broker
) -> None:
    token = broker.token()
    first = fleet.agent("a1")
    with store_locked(broker):  # the record is written; the token use and key are not
        refused = first.enroll(token)
    assert refused.returncode == 2
    assert "the broker database is unavailable" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert uses_left(broker) == [1]
    chain = records(broker)
    types = [r["type"] for r in chain]
    assert types[-2:] == ["agent.enrolled", "agent.enrol.aborted"]
    aborted = chain[-1]
    assert aborted["code"] == "AH1308"
    assert aborted["target"] == chain[-2]["target"]
    assert aborted["details"] == {
        "token": chain[-2]["details"]["token"],
        "reason": "store_unavailable",
    }
    assert broker.agents(ADMIN, ADMIN_PW) == []
    done = fleet.agent("a2").enroll(token)
    assert done.returncode == 0, done.stderr
    assert uses_left(broker) == [0]
    assert broker_cli("audit", "verify", "--data", str(broker.data)).returncode == 0


def test_the_token_use_and_the_key_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    """The store's side: the check spends nothing; the enrolment spends one use and
    keeps the key in one transaction, and refuses both when another enrolment took the
    last use (or the key) between the check and the record."""
    store = Store.open(tmp_path / "broker.sqlite3")
    try:
        now = time.time()
        store.add_enrol_token("h" * 64, now + 60, 1, "admin")
        first, second = _agent("a1"), _agent("a2")
        assert store.enrol_refusal("h" * 64, "a1", now) is None
        assert store.enrol_refusal("h" * 64, "a2", now) is None  # both checked: none spent
        assert store.enrol_tokens()[0].uses_left == 1
        assert store.enrol_agent("h" * 64, now, first) is None
        assert store.enrol_agent("h" * 64, now, second) == "used"  # the race's loser
        assert [a.id for a in store.agents()] == ["a1"]
        assert store.enrol_tokens()[0].uses_left == 0
        assert store.enrol_refusal("h" * 64, "a2", now) == "used"
        store.add_enrol_token("k" * 64, now + 60, 5, "admin")
        assert store.enrol_refusal("k" * 64, "a1", now) == "key_taken"
        assert store.enrol_agent("k" * 64, now, first) == "key_taken"
        assert store.enrol_tokens()[0].uses_left == 5  # a refusal spends nothing
        assert store.enrol_refusal("x" * 64, "a3", now) == "unknown"
        assert store.enrol_refusal("k" * 64, "a3", now + 120) == "expired"
    finally:
        store.close()


@pytest.mark.parametrize("readable", [True, False])
async def test_a_commit_whose_answer_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    """PostgreSQL's COMMIT can succeed and its answer be lost (StoreError): made real
    here by a store whose ``enrol_agent`` commits, then raises. Read back, the key is
    stored: the PC is enrolled (the chain's ``agent.enrolled`` is true, nothing more is
    written). A store that cannot say either way: aborted, ``store_outcome_unknown``."""
    path = tmp_path / "broker.sqlite3"
    store = Store.open(path)
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    worker = await StoreWorker.open(path)
    committed = Store.enrol_agent

    def answer_lost(db: Store, hashed: str, now: float, agent: AgentRecord) -> str | None:
        committed(db, hashed, now, agent)
        raise StoreError("the broker database is unavailable")

    def unreadable(db: Store, agent_id: str) -> AgentRecord | None:
        raise StoreError("the broker database is unavailable")

    monkeypatch.setattr(Store, "enrol_agent", answer_lost)
    if not readable:
        monkeypatch.setattr(Store, "agent", unreadable)
    try:
        secret = "S" * 43
        store.add_enrol_token(secret_hash(secret), time.time() + 60, 1, "admin")
        key = asyncssh.generate_private_key("ssh-ed25519")
        line = public_key_line(key.convert_to_public())
        agent_id = agent_id_for(line)
        keys = EnrolledKeys()
        desk = EnrolmentDesk(
            worker, audit, keys, tunnel_public=None, tunnel_url="wss://broker.test/api/v1/tunnel",
            tunnel_key="ssh-ed25519 BROKER", organisation="org",
        )  # fmt: skip
        body = {"secret": secret, "host_key": line, "hostname": "pc1"}
        if readable:
            reply = await desk.enrol(body, "192.0.2.1")
            assert reply.agent_id == agent_id
            assert keys.status(agent_id, line) == "enrolled"  # the tunnel takes it
        else:
            with pytest.raises(StoreError):
                await desk.enrol(body, "192.0.2.1")
            assert keys.status(agent_id, line) == "unknown"
        chain = audit.records()
        ours = [r for r in chain if r.target == agent_id]
        if readable:
            assert [r.type for r in ours] == ["agent.enrolled"]
        else:
            assert [r.type for r in ours] == ["agent.enrolled", "agent.enrol.aborted"]
            assert ours[-1].details["reason"] == "store_outcome_unknown"
        # Either way the commit happened: the key stored, the token's one use spent.
        assert [a.id for a in store.agents()] == [agent_id]
        assert store.enrol_tokens()[0].uses_left == 0
    finally:
        audit.close()
        store.close()
        await worker.close()


def _agent(agent_id: str) -> AgentRecord:
    return AgentRecord(
        agent_id, "ssh-ed25519 KEY" + agent_id, "pc", "Linux", "ann", "1.0", time.time(), None,
        False,
    )  # fmt: skip
