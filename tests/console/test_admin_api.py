"""Roles, users, enrolment tokens, agent removal, the audit viewer and login throttling,
all driven from outside over HTTPS against real broker and agent processes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Fleet,
    broker_cli,
    online,
    wait_for,
)
from wallkit import Console, enrol_totp

ADMIN_ONLY = [
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("PATCH", f"/api/v1/users/{ADMIN}"),
    ("POST", f"/api/v1/users/{ADMIN}/reset-totp"),
    ("PUT", "/api/v1/policy"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens/0123456789ab/revoke"),
    ("DELETE", "/api/v1/agents/whatever"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/verify"),
]


@pytest.fixture
def admin(broker: Broker) -> Iterator[Console]:
    console = Console.login(broker, ADMIN, ADMIN_PW)
    yield console
    console.close()


@pytest.fixture
def tech(broker: Broker) -> Iterator[Console]:
    console = Console.login(broker, TECH, TECH_PW)
    yield console
    console.close()


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_technicians_are_refused_by_the_api(tech: Console, method: str, path: str) -> None:
    answer = tech.client.request(method, path, json={})
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"


def test_every_state_change_needs_the_csrf_token(admin: Console) -> None:
    admin.client.headers.pop("X-CSRF-Token")
    for method, path in ADMIN_ONLY:
        if method != "GET":
            answer = admin.client.request(method, path, json={})
            assert answer.status_code == 403 and answer.json()["error"] == "csrf", path


def test_create_disable_and_change_role(broker: Broker, admin: Console) -> None:
    body = {"username": "frank", "full_name": "Frank <b>", "role": "technician"}
    weak = admin.post("/api/v1/users", json={**body, "password": "short"})
    assert weak.status_code == 400 and weak.json()["error"] == "weak_password"
    bad = admin.post("/api/v1/users", json={**body, "username": "a b", "password": "x" * 20})
    assert bad.json()["error"] == "bad_username"
    made = admin.post("/api/v1/users", json={**body, "password": "frank password 1"})
    assert made.status_code == 201
    assert made.json()["full_name"] == "Frank <b>" and made.json()["totp"] is False
    again = admin.post("/api/v1/users", json={**body, "password": "frank password 1"})
    assert again.status_code == 409
    frank = Console.login(broker, "frank", "frank password 1")
    assert frank.get("/api/v1/me").json()["role"] == "technician"
    promoted = admin.client.patch("/api/v1/users/frank", json={"role": "admin"})
    assert promoted.json()["role"] == "admin"
    assert frank.get("/api/v1/users").status_code == 200  # roles are read at each call
    disabled = admin.client.patch("/api/v1/users/frank", json={"disabled": True})
    assert disabled.json()["disabled"] is True
    assert frank.get("/api/v1/me").status_code == 401  # the live session died with it
    with broker.sync_client() as client:
        answer = client.post(
            "/api/v1/login", json={"username": "frank", "password": "frank password 1"}
        )
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_credentials"
    frank.close()
    types = broker.audit_types()
    assert {"user.created", "user.role_changed", "user.disabled"} <= set(types)


def test_admin_cannot_lock_the_desk_out(admin: Console) -> None:
    me = admin.client.patch(f"/api/v1/users/{ADMIN}", json={"disabled": True})
    assert me.status_code == 409 and me.json()["error"] == "self"
    demote = admin.client.patch(f"/api/v1/users/{ADMIN}", json={"role": "technician"})
    assert demote.status_code == 409
    assert admin.client.patch("/api/v1/users/nobody", json={"disabled": True}).status_code == 404
    assert admin.client.patch(f"/api/v1/users/{TECH}", json={"role": "root"}).status_code == 400


def test_tokens_create_list_use_and_revoke(staffed: Fleet, broker: Broker, admin: Console) -> None:
    made = admin.post("/api/v1/tokens", json={"ttl": "1h", "uses": 1})
    assert made.status_code == 201
    token = made.json()
    assert token["command"] == f"allowhelp-agent enroll {token['token']}"
    assert token["token"] not in str(admin.get("/api/v1/audit").json())  # only a hash id
    listed = {t["id"]: t for t in admin.get("/api/v1/tokens").json()}
    assert listed[token["id"]]["state"] == "active"
    assert listed[token["id"]]["created_by"] == f"admin:{ADMIN}"
    assert staffed.agent("token-agent").enroll(token["token"]).returncode == 0
    listed = {t["id"]: t for t in admin.get("/api/v1/tokens").json()}
    assert listed[token["id"]]["state"] == "used"

    spare = admin.post("/api/v1/tokens", json={"ttl": "2h", "uses": 5}).json()
    assert admin.post(f"/api/v1/tokens/{spare['id']}/revoke").status_code == 200
    assert admin.post(f"/api/v1/tokens/{spare['id']}/revoke").status_code == 404
    listed = {t["id"]: t for t in admin.get("/api/v1/tokens").json()}
    assert listed[spare["id"]]["state"] == "revoked"
    refused = staffed.agent("late-agent").enroll(spare["token"])
    assert refused.returncode != 0
    assert "token.revoked" in broker.audit_types()
    for bad in ({"ttl": "1y"}, {"uses": 0}, {"uses": "3"}, {"ttl": 5}):
        assert admin.post("/api/v1/tokens", json=bad).status_code == 400, bad


def test_removed_agent_is_dropped_and_its_key_refused(
    staffed: Fleet, broker: Broker, admin: Console, tech: Console
) -> None:
    agent = staffed.agent("doomed")
    assert agent.enroll(broker.token()).returncode == 0
    agent.start("--reconnect-cap", "1")
    wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
    assert tech.client.delete(f"/api/v1/agents/{agent.agent_id}").status_code == 403
    assert admin.client.delete(f"/api/v1/agents/{agent.agent_id}").status_code == 200
    assert admin.client.delete(f"/api/v1/agents/{agent.agent_id}").status_code == 404
    assert agent.agent_id not in [a["id"] for a in admin.get("/api/v1/agents").json()]

    def refused_after_removal() -> bool:
        records = admin.get("/api/v1/audit").json()
        removed = max(r["seq"] for r in records if r["type"] == "agent.removed")
        later = [r for r in records if r["seq"] > removed and r["target"] == agent.agent_id]
        return any(r["type"] == "agent.disconnected" for r in later) and any(
            r["type"] == "agent.refused" and r["details"]["reason"] == "removed" for r in later
        )

    wait_for(refused_after_removal, 20, "the tunnel to drop and the key to be refused")


def test_audit_viewer_reports_the_chain(broker: Broker, admin: Console) -> None:
    status = admin.get("/api/v1/audit/verify").json()
    assert status["ok"] is True and status["problem"] == ""
    records = admin.get("/api/v1/audit", params={"after": 0, "limit": 1000}).json()
    assert status["count"] >= len(records) > 0
    assert status["last_seq"] >= records[-1]["seq"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert admin.get("/api/v1/audit", params={"after": -1}).status_code == 400


def test_audit_viewer_sees_an_edited_record(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        broker = fleet.broker().start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        admin = Console.login(broker, ADMIN, ADMIN_PW)
        db = sqlite3.connect(broker.data / "audit.sqlite3")
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
        db.commit()
        db.close()
        status = admin.get("/api/v1/audit/verify").json()
        assert status["ok"] is False and status["first_bad_seq"] == 2
        assert "record 2" in status["problem"]
        admin.close()
    finally:
        fleet.close()


def wrong(client: httpx.Client, user: str) -> httpx.Response:
    return client.post("/api/v1/login", json={"username": user, "password": "not it at all"})


def audit_of(broker: Broker, kind: str) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if r["type"] == kind]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of its own; each throttling test comes from its own 127.0.0.x address."""
    fleet = Fleet(tmp_path_factory.mktemp("throttle"))
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    broker.add_user(TECH, TECH_PW)
    yield broker
    fleet.close()


def client_from(broker: Broker, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=broker.ssl_context(), local_address=address)
    return httpx.Client(base_url=broker.url, transport=transport, timeout=30)


def in_parallel(broker: Broker, address: str, users: list[str]) -> list[int]:
    def one(user: str) -> int:
        with client_from(broker, address) as client:
            return wrong(client, user).status_code

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        return list(pool.map(one, users))


def test_thirty_wrong_passwords_lock_the_user(guarded: Broker) -> None:
    with client_from(guarded, "127.0.0.2") as client:
        codes = [wrong(client, TECH).status_code for _ in range(30)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429] * 20
        locked = client.post("/api/v1/login", json={"username": TECH, "password": TECH_PW})
        assert locked.status_code == 429  # even the right password, while locked
        assert int(locked.headers["retry-after"]) > 0
        assert locked.json()["error"] == "throttled"
    with client_from(guarded, "127.0.0.3") as elsewhere:  # the lock is on the name
        assert (
            elsewhere.post(
                "/api/v1/login", json={"username": TECH, "password": TECH_PW}
            ).status_code
            == 429
        )
    throttled = [r for r in audit_of(guarded, "auth.login.throttled") if r["target"] == TECH]
    assert len(throttled) == 1  # one record per lock, not one per guess
    assert throttled[0]["details"] == {
        "scope": "user",
        "remote": "127.0.0.2",
        "retry_after": throttled[0]["details"]["retry_after"],
    }


def test_parallel_guesses_cannot_slip_under_the_limit(guarded: Broker) -> None:
    codes = in_parallel(guarded, "127.0.0.4", ["ghost"] * 24)  # an unknown name, too
    assert sorted(codes) == [401] * 10 + [429] * 14


def test_one_address_guessing_many_names_is_locked(guarded: Broker) -> None:
    codes = in_parallel(guarded, "127.0.0.5", [f"user{i}" for i in range(36)])
    assert sorted(codes) == [401] * 30 + [429] * 6
    with client_from(guarded, "127.0.0.5") as client:
        locked = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert locked.status_code == 429
    with client_from(guarded, "127.0.0.6") as elsewhere:  # another address is fine
        ok = elsewhere.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert ok.status_code == 200
    scopes = {
        r["details"]["scope"]
        for r in audit_of(guarded, "auth.login.throttled")
        if r["details"]["remote"] == "127.0.0.5"
    }
    assert scopes == {"addr"}


def test_a_right_password_without_its_code_is_no_failure(guarded: Broker) -> None:
    with client_from(guarded, "127.0.0.7") as client:
        console = Console.login(guarded, ADMIN, ADMIN_PW)
        made = console.post(
            "/api/v1/users",
            json={"username": "gina", "role": "technician", "password": "gina password 12"},
        )
        assert made.status_code == 201
        console.close()
        gina = Console.login(guarded, "gina", "gina password 12")
        enrol_totp(gina)
        gina.close()
        body = {"username": "gina", "password": "gina password 12"}
        codes = [client.post("/api/v1/login", json=body).json()["error"] for _ in range(11)]
        assert codes == ["totp_required"] * 11  # asking for the code never locks her out
        wrong_codes = [
            client.post("/api/v1/login", json={**body, "totp": "000000"}).status_code
            for _ in range(12)
        ]
        assert wrong_codes[:10] == [401] * 10 and wrong_codes[10:] == [429] * 2


def test_the_audit_viewer_reads_the_file_the_broker_writes() -> None:
    """The console's viewer reads the path the broker's AuditLog opened (no name
    of its own any more); the CLI names the file, and must name the same one."""
    from allowhelp.broker.cli import audit as cli
    from allowhelp.broker.node import datafolder

    assert cli.AUDIT_FILE == datafolder.AUDIT_FILE
