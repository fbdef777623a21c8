"""Password hashes: argon2id now, scrypt hashes from before still good, upgraded at login.

The login runs through the real Authenticator on a real SQLite store and audit
log; the hash it keeps is read back from the database file itself. One test
drives a real broker process over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import argon2
import pytest

from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.auth import authenticator, passwords
from allowhelp.broker.auth.authenticator import Authenticator
from allowhelp.broker.auth.passwords import (
    HASHER,
    dummy_hash,
    hash_password,
    needs_rehash,
    verify_password,
)
from allowhelp.broker.errors import AuthError
from allowhelp.broker.model.throttle import ThrottlePolicy
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from harness import Broker, Fleet, broker_cli

PASSWORD = "a long enough password"
REMOTE = "192.0.2.7"


def scrypt_hash(password: str) -> str:
    """A hash exactly as allowhelp wrote them before argon2 (N=2^15, r=8, p=1)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=2**15, r=8, p=1, maxmem=64 * 1024 * 1024, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt$32768$8$1${b64(salt).decode()}${b64(digest).decode()}"


def stored_hash(db: Path, name: str) -> str:
    """The hash as it is in the database file, read through a connection of its own."""
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = ?", (name,))
        value: str = row.fetchone()[0]
    return value


WEAK = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


class Desk:
    """An Authenticator on a real store (its worker threads, as the broker runs
    it) and audit log in one folder; ``store`` is a plain connection for set-up."""

    def __init__(self, folder: Path, worker: StoreWorker) -> None:
        self.db = folder / "broker.sqlite3"
        self.audit_path = folder / "audit.sqlite3"
        self.worker = worker
        self.store = Store.open(self.db)
        self.audit = AuditLog.open(self.audit_path)
        generous = ThrottlePolicy(per_user=1000, per_address=1000)
        self.auth = Authenticator(worker, self.audit, 1.0, throttle=generous)

    @classmethod
    async def open(cls, folder: Path) -> Desk:
        return cls(folder, await StoreWorker.open(folder / "broker.sqlite3"))

    def add(self, name: str, stored_hash: str) -> None:
        self.store.add_user(name, name, "technician", stored_hash)

    def stored(self, name: str) -> str:
        return stored_hash(self.db, name)

    async def close(self) -> None:
        self.audit.close()
        self.store.close()
        await self.worker.close()


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    made = await Desk.open(tmp_path)
    yield made
    await made.close()


def current_parameters(stored: str) -> bool:
    return stored.startswith("$argon2id$") and argon2.extract_parameters(stored) == (
        argon2.Parameters(
            type=argon2.Type.ID,
            version=19,
            salt_len=HASHER.salt_len,
            hash_len=HASHER.hash_len,
            time_cost=HASHER.time_cost,
            memory_cost=HASHER.memory_cost,
            parallelism=HASHER.parallelism,
        )
    )


def test_new_hashes_are_argon2id_with_argon2_cffis_default_profile() -> None:
    stored = hash_password(PASSWORD)
    assert current_parameters(stored)
    assert argon2.extract_parameters(stored) == argon2.profiles.RFC_9106_LOW_MEMORY
    assert verify_password(PASSWORD, stored) and not needs_rehash(stored)
    assert not verify_password(PASSWORD + "!", stored)
    assert hash_password(PASSWORD) != stored  # salted


def test_old_scrypt_hashes_verify_and_ask_for_a_rehash() -> None:
    old = scrypt_hash(PASSWORD)
    assert verify_password(PASSWORD, old)
    assert not verify_password(PASSWORD[:-1], old)
    assert needs_rehash(old)
    assert needs_rehash(WEAK.hash(PASSWORD))
    for broken in ("", "garbage", "scrypt$1$2$3", "scrypt$x$8$1$AAAA$AAAA", "$argon2id$v=19$x"):
        assert not verify_password(PASSWORD, broken)
        assert needs_rehash(broken)


async def test_old_scrypt_hash_is_replaced_by_argon2id_at_login(desk: Desk) -> None:
    old = scrypt_hash(PASSWORD)
    desk.add("olga", old)
    await desk.auth.login("olga", PASSWORD, REMOTE)
    upgraded = desk.stored("olga")
    assert upgraded != old and current_parameters(upgraded)
    assert verify_password(PASSWORD, upgraded)
    await desk.auth.login("olga", PASSWORD, REMOTE)  # the new hash logs in, and stays
    assert desk.stored("olga") == upgraded
    logins = [r for r in read_records(desk.audit_path) if r.type == "auth.login.ok"]
    assert [r.details.get("password_rehashed") for r in logins] == [True, None]
    assert PASSWORD not in str(logins) and upgraded not in str(logins)


async def test_weaker_argon2_parameters_are_raised_at_login(desk: Desk) -> None:
    weak = WEAK.hash(PASSWORD)
    desk.add("wes", weak)
    await desk.auth.login("wes", PASSWORD, REMOTE)
    assert current_parameters(desk.stored("wes"))


async def test_a_wrong_password_never_rehashes(desk: Desk) -> None:
    old, weak = scrypt_hash(PASSWORD), WEAK.hash(PASSWORD)
    desk.add("olga", old)
    desk.add("wes", weak)
    for name in ("olga", "wes"):
        with pytest.raises(AuthError, match="wrong username or password"):
            await desk.auth.login(name, PASSWORD + "?", REMOTE)
    assert desk.stored("olga") == old and desk.stored("wes") == weak


async def test_a_disabled_user_is_refused_and_not_rehashed(desk: Desk) -> None:
    old = scrypt_hash(PASSWORD)
    desk.add("dora", old)
    desk.store.update_user("dora", disabled=True)
    with pytest.raises(AuthError, match="wrong username or password"):
        await desk.auth.login("dora", PASSWORD, REMOTE)
    assert desk.stored("dora") == old


async def test_an_unknown_user_costs_one_argon2_check_at_current_cost(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dummy-hash path: the same function, a hash with the current parameters."""
    checked: list[str] = []

    def spy(password: str, stored: str) -> bool:
        checked.append(stored)
        return passwords.verify_password(password, stored)

    monkeypatch.setattr(authenticator, "verify_password", spy)
    desk.add("tina", hash_password(PASSWORD))
    for name in ("nobody-here", "tina"):
        with pytest.raises(AuthError) as refused:
            await desk.auth.login(name, "not the password at all", REMOTE)
        assert str(refused.value) == "wrong username or password"
    assert checked == [dummy_hash(), desk.stored("tina")]
    assert all(current_parameters(h) for h in checked)


def test_a_real_broker_upgrades_an_old_hash_at_login(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        broker: Broker = fleet.broker().start()
        broker.add_user("olga", PASSWORD)
        db = broker.data / "broker.sqlite3"
        old = scrypt_hash(PASSWORD)
        with closing(sqlite3.connect(db, isolation_level=None)) as conn:  # as an old broker left it
            conn.execute("UPDATE users SET password_hash = ? WHERE username = 'olga'", (old,))
        with broker.sync_client() as client:
            body = {"username": "olga", "password": PASSWORD}
            assert client.post("/api/v1/login", json=body).status_code == 200
        upgraded = stored_hash(db, "olga")
        assert current_parameters(upgraded) and verify_password(PASSWORD, upgraded)
        exported = broker_cli("audit", "export", "--data", str(broker.data)).stdout
        assert '"password_rehashed":true' in exported.replace(" ", "")
        assert PASSWORD not in broker.log.read_text() + exported
    finally:
        fleet.close()
