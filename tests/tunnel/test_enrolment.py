"""Enrolment through real broker and agent processes."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from harness import ADMIN, ADMIN_PW, Broker, Fleet, agent_cli, broker_cli, online, wait_for


@pytest.fixture
def broker(fleet: Fleet):  # type: ignore[no-untyped-def]
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    return broker


def test_enrol_then_online(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    agent = fleet.agent()
    done = agent.enroll(broker.token())
    assert done.returncode == 0, done.stderr
    assert agent.agent_id in done.stdout
    assert stat.S_IMODE(agent.config.stat().st_mode) == 0o700
    for name in ("agent.json", "host_key"):
        assert stat.S_IMODE((agent.config / name).stat().st_mode) == 0o600
    listed = broker.agents(ADMIN, ADMIN_PW)
    assert [a["id"] for a in listed] == [agent.agent_id]
    assert listed[0]["online"] is False
    agent.start()
    wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
    row = broker.agents(ADMIN, ADMIN_PW)[0]
    assert row["hostname"] and row["os"] and row["user"] and row["version"]
    assert row["connected_since"] is not None
    types = broker.audit_types()
    assert "agent.enrolled" in types and "agent.connected" in types


def test_token_is_single_use(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token()
    assert fleet.agent("a1").enroll(token).returncode == 0
    second = fleet.agent("a2").enroll(token)
    assert second.returncode == 2
    assert "already been used" in second.stderr
    assert "Traceback" not in second.stderr
    assert "token.refused" in broker.audit_types()


def test_token_with_uses(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token("--uses", "2")
    assert fleet.agent("a1").enroll(token).returncode == 0
    assert fleet.agent("a2").enroll(token).returncode == 0
    assert fleet.agent("a3").enroll(token).returncode == 2


def test_expired_token(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token("--ttl", "1m")
    with sqlite3.connect(broker.data / "broker.sqlite3") as db:
        db.execute("UPDATE enrol_tokens SET expires = 0")
    done = fleet.agent().enroll(token)
    assert done.returncode == 2
    assert "expired" in done.stderr


def test_damaged_token(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token()
    middle = len(token) // 2
    damaged = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    done = fleet.agent().enroll(damaged)
    assert done.returncode == 2
    assert "damaged" in done.stderr
    assert not (fleet.agent().config / "agent.json").exists()
    garbage = agent_cli("enroll", "hello", "--config", str(fleet.root / "x"))
    assert garbage.returncode == 2 and "not an allowhelp enrolment token" in garbage.stderr


def test_impostor_broker_with_another_ca(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token()
    broker.stop()
    impostor = fleet.broker("impostor", https=broker.https).start()
    assert impostor.url == broker.url  # same URL, different CA
    done = fleet.agent().enroll(token)
    assert done.returncode == 2
    assert "impostor" in done.stderr
    assert not (fleet.agent().config / "agent.json").exists()


def test_broker_unreachable(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    token = broker.token()
    broker.stop()
    done = fleet.agent().enroll(token)
    assert done.returncode == 2
    assert "cannot reach the broker" in done.stderr


def test_token_create_needs_a_broker_that_ran(tmp_path: Path) -> None:
    done = broker_cli("token", "create", "--data", str(tmp_path / "never"))
    assert done.returncode == 2
    assert "start `allowhelp-broker serve" in done.stderr


def test_enrolled_key_cannot_be_enrolled_again(fleet: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    """A token holder must not rename another PC by replaying its public key."""
    import json

    import httpx

    agent = fleet.agent()
    assert agent.enroll(broker.token()).returncode == 0
    host_key = (agent.config / "host_key").read_text()
    del host_key  # the attacker only knows the public key, which the broker lists
    public = json.loads((agent.config / "agent.json").read_text())
    with sqlite3.connect(broker.data / "broker.sqlite3") as db:
        key = db.execute("SELECT public_key FROM agents").fetchone()[0]
    from allowhelp.certs.token import EnrolmentToken

    secret = EnrolmentToken.decode(broker.token()).secret
    with httpx.Client(base_url=broker.url, verify=broker.ssl_context()) as client:
        answer = client.post(
            "/api/v1/enrol",
            json={"secret": secret, "host_key": key, "hostname": "evil", "os": "x", "user": "x"},
        )
    assert answer.status_code == 403
    assert "already enrolled" in answer.json()["message"]
    assert broker.agents(ADMIN, ADMIN_PW)[0]["hostname"] != "evil"
    assert public["agent_id"] == broker.agents(ADMIN, ADMIN_PW)[0]["id"]


def test_guessing_tokens_is_throttled_with_one_record_per_lock(
    fleet: Fleet, broker: Broker
) -> None:
    """Anyone may call the enrolment: 30 refusals from one address in 15 minutes
    (a success counts nothing), then 429 with Retry-After before any token is looked
    up, and one ``token.throttled`` on the chain instead of a record per guess. The
    lock is that address's: a PC elsewhere enrols with a good token meanwhile."""
    import json
    import secrets

    import asyncssh
    import httpx

    from allowhelp.certs.token import EnrolmentToken

    def key() -> str:
        return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

    def guess(client: httpx.Client) -> httpx.Response:
        body = {"secret": secrets.token_hex(16), "host_key": key()}
        return client.post("/api/v1/enrol", json=body)

    agent = fleet.agent()  # a PC enrolled from this address: a success counts nothing
    assert agent.enroll(broker.token()).returncode == 0
    with sqlite3.connect(broker.data / "broker.sqlite3") as db:
        enrolled = db.execute("SELECT public_key FROM agents").fetchone()[0]
    secret = EnrolmentToken.decode(broker.token("--uses", "40")).secret
    with httpx.Client(base_url=broker.url, verify=broker.ssl_context()) as client:
        for _ in range(10):  # a known key replayed: refused (it needs no good token)
            again = client.post("/api/v1/enrol", json={"secret": secret, "host_key": enrolled})
            assert again.status_code == 403 and "already enrolled" in again.text
        answers = [guess(client) for _ in range(20)]
        assert {a.status_code for a in answers} == {403}, answers[0].text
        throttled = [guess(client) for _ in range(5)]
    assert {a.status_code for a in throttled} == {429}
    assert throttled[0].json()["error"] == "throttled"
    assert "too many refused enrolments" in throttled[0].json()["message"]
    assert 0 < int(throttled[0].headers["retry-after"]) <= 15 * 60
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    types = [r["type"] for r in records]
    assert types.count("token.refused") == 30
    assert types.count("token.throttled") == 1
    assert next(r for r in records if r["type"] == "token.throttled")["actor"] == (
        "anonymous@127.0.0.1"
    )
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.2", verify=broker.ssl_context())
    with httpx.Client(base_url=broker.url, transport=elsewhere) as client:
        secret = EnrolmentToken.decode(broker.token()).secret
        good = client.post("/api/v1/enrol", json={"secret": secret, "host_key": key()})
    assert good.status_code == 201, good.text
