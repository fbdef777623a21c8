"""A TOTP code is good once, and a clock set back does not lock anyone out.

The store remembers every step used, not the highest one. First the real
Authenticator on a real SQLite store, with the clock it is given; then a real
broker process whose clock libfaketime moves ahead by five minutes and back.
"""

from __future__ import annotations

import glob
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.auth import totp
from allowhelp.broker.auth.authenticator import Authenticator
from allowhelp.broker.auth.passwords import hash_password
from allowhelp.broker.errors import AuthError
from allowhelp.broker.model.throttle import ThrottlePolicy
from allowhelp.broker.store import Store
from allowhelp.broker.store.migrations import MIGRATIONS
from allowhelp.broker.store.worker import StoreWorker
from harness import Broker, Fleet, wait_for
from wallkit import Console, enrol_totp

NAME, PASSWORD = "tess", "tess password 123"
T0 = 1_800_000_000.0  # the start of a step
AHEAD = 300.0  # five minutes: ten steps


def user_of(store: Store) -> int:
    user = store.user_by_name(NAME)
    assert user is not None
    return user.id


class Desk:
    """An Authenticator with a hand-set clock, on a real store (its worker
    threads, as the broker runs it) and audit log; ``store`` is for set-up."""

    def __init__(self, folder: Path, worker: StoreWorker) -> None:
        self.now = T0
        self.db = folder / "broker.sqlite3"
        self.audit_path = folder / "audit.sqlite3"
        self.worker = worker
        self.store = Store.open(self.db)
        self.audit = AuditLog.open(self.audit_path)
        generous = ThrottlePolicy(per_user=1000, per_address=1000)
        self.auth = Authenticator(
            worker, self.audit, 1.0, throttle=generous, clock=lambda: self.now
        )

    @classmethod
    async def open(cls, folder: Path) -> Desk:
        return cls(folder, await StoreWorker.open(folder / "broker.sqlite3"))

    def enrol(self, secret: str) -> int:
        """TOTP set up with ``secret``, confirmed by the code of the step now."""
        user_id = user_of(self.store)
        self.store.set_totp_pending(user_id, secret)
        step = totp.step_at(self.now)
        assert self.store.activate_totp(user_id, secret, step, [])
        return step

    async def login(self, code: str) -> str:
        """'ok', or the error code the login answered."""
        try:
            await self.auth.login(NAME, PASSWORD, "192.0.2.9", code)
        except AuthError as exc:
            return exc.code
        return "ok"

    def used_steps(self) -> list[int]:
        with closing(sqlite3.connect(self.db)) as conn:
            rows = conn.execute("SELECT step FROM totp_used_steps ORDER BY step").fetchall()
        return [row[0] for row in rows]

    async def close(self) -> None:
        self.audit.close()
        self.store.close()
        await self.worker.close()


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    made = await Desk.open(tmp_path)
    made.store.add_user(NAME, NAME, "technician", hash_password(PASSWORD))
    yield made
    await made.close()


def code(secret: str, when: float) -> str:
    return totp.code_at(secret, when)


async def test_a_code_is_good_once(desk: Desk) -> None:
    secret = totp.new_secret()
    enrolled = desk.enrol(secret)
    assert await desk.login(code(secret, desk.now)) == "invalid_totp"  # the confirming code
    desk.now += 2 * totp.PERIOD
    fresh = code(secret, desk.now)
    assert await desk.login(fresh) == "ok"
    assert await desk.login(fresh) == "invalid_totp"
    # The step before is within the drift window and was never used: good, once
    # (keeping only the highest step used to refuse it).
    before = code(secret, desk.now - totp.PERIOD)
    assert await desk.login(before) == "ok"
    assert await desk.login(before) == "invalid_totp"
    assert desk.used_steps() == [enrolled, enrolled + 1, enrolled + 2]
    reasons = [
        r.details["reason"] for r in read_records(desk.audit_path) if r.type == "auth.login.failed"
    ]
    assert reasons == ["totp reused"] * 3


async def test_after_the_clock_goes_back_a_fresh_code_works(desk: Desk) -> None:
    secret = totp.new_secret()
    desk.enrol(secret)
    real = T0 + 10 * totp.PERIOD
    desk.now = real + AHEAD  # the broker's clock runs five minutes ahead
    ahead_code = code(secret, desk.now)
    assert await desk.login(ahead_code) == "ok"
    desk.now = real  # corrected
    assert await desk.login(code(secret, desk.now)) == "ok"
    assert await desk.login(code(secret, desk.now)) == "invalid_totp"
    desk.now = real + AHEAD  # real time catches up: the code used back then is still spent
    assert await desk.login(ahead_code) == "invalid_totp"
    assert await desk.login(code(secret, desk.now + totp.PERIOD)) == "ok"


async def test_only_steps_near_now_are_remembered(desk: Desk) -> None:
    secret = totp.new_secret()
    enrolled = desk.enrol(secret)
    desk.now += totp.PERIOD
    assert await desk.login(code(secret, desk.now)) == "ok"
    assert desk.used_steps() == [enrolled, enrolled + 1]
    desk.now += 2 * 24 * 3600  # two days later: yesterday's steps can never come back
    later = totp.step_at(desk.now)
    assert await desk.login(code(secret, desk.now)) == "ok"
    assert desk.used_steps() == [later]
    assert desk.store.totp(user_of(desk.store)).last_step == later


def test_upgrade_keeps_the_last_step_spent(tmp_path: Path) -> None:
    """A database from before (schema 3, one totp_last_step) keeps that code spent."""
    db = tmp_path / "broker.sqlite3"
    secret, step = totp.new_secret(), totp.step_at(T0)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for number, script in enumerate(MIGRATIONS[:3], start=1):
            conn.executescript(f"BEGIN;{script};PRAGMA user_version={number};COMMIT;")
        conn.execute(
            "INSERT INTO users (username, full_name, role, password_hash, created, totp_secret,"
            " totp_last_step) VALUES ('tess', 'Tess', 'technician', 'x', 0, ?, ?)",
            (secret, step),
        )
    store = Store.open(db)
    try:
        user_id = user_of(store)
        assert store.totp(user_id).last_step == step
        keep = totp.remembered_steps(T0)
        assert not store.use_totp_step(user_id, step, keep)
        assert store.use_totp_step(user_id, step - 1, keep)  # the one before was never used
    finally:
        store.close()


# A real broker process, its clock moved by libfaketime.


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing: scripts/install test installs faketime"
    return found[0]


def broker_offset(broker: Broker) -> float:
    """How far the broker's clock is from ours, by the Date header it sends."""
    with broker.sync_client() as client:
        sent = parsedate_to_datetime(client.get("/api/v1/me").headers["date"])
    return sent.timestamp() - time.time()


def set_clock(broker: Broker, clock_file: Path, offset: int) -> None:
    clock_file.write_text(f"{offset:+d}\n")
    wait_for(
        lambda: abs(broker_offset(broker) - offset) < 5,
        10,
        f"the broker's clock to be {offset:+d} s off",
        step=0.2,
    )


def login_answer(broker: Broker, secret_code: str) -> tuple[int, str]:
    with broker.sync_client() as client:
        body = {"username": NAME, "password": PASSWORD, "totp": secret_code}
        answer = client.post("/api/v1/login", json=body)
        return answer.status_code, answer.json().get("error", "")


def test_a_real_broker_accepts_fresh_codes_after_its_clock_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock_file = tmp_path / "faketime"
    clock_file.write_text("+0\n")
    fleet = Fleet(tmp_path)
    try:
        with monkeypatch.context() as env:  # for the broker process only
            env.setenv("LD_PRELOAD", libfaketime())
            env.setenv("FAKETIME_TIMESTAMP_FILE", str(clock_file))
            env.setenv("FAKETIME_NO_CACHE", "1")  # read the file at every clock call
            env.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")  # timers stay sane
            broker = fleet.broker().start()
        broker.add_user(NAME, PASSWORD)
        tess = Console.login(broker, NAME, PASSWORD)
        secret, _, enrolled = enrol_totp(tess)
        tess.close()

        set_clock(broker, clock_file, int(AHEAD))
        ahead_code = code(secret, time.time() + AHEAD)
        assert login_answer(broker, ahead_code)[0] == 200
        assert login_answer(broker, ahead_code) == (401, "invalid_totp")

        set_clock(broker, clock_file, 0)
        current = totp.step_at(time.time())
        fresh_step = current if current != enrolled else current + 1
        fresh = totp.code_at(secret, fresh_step * totp.PERIOD)
        assert login_answer(broker, fresh)[0] == 200  # was invalid_totp for five minutes
        assert login_answer(broker, fresh) == (401, "invalid_totp")
    finally:
        fleet.close()
