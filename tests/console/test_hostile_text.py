"""Text and numbers that look right to Python and are not, against a real broker:
each one a clear 4xx, never a 500, and never a record of something that did not happen.

- a lone surrogate (``"\\ud800"``): ``json.loads`` takes it, SQLite and argon2 do
  not (``UnicodeEncodeError``): a login or an enrolment ended in a 500 before its
  refusal was audited, and ``POST /api/v1/users`` wrote ``user.created`` for a user
  it then failed to store;
- digits that are not 0-9 ("١٢٣٤٥٦", "²"): ``str.isdigit`` takes them,
  ``hmac.compare_digest`` and ``int`` do not;
- ``2.0`` for "two admins": ``2.0 in (1, 2)`` is true, so it was stored as "2.0",
  read back as one admin, and every later ``GET /api/v1/policy`` was a 500;
- an ``after`` past SQLite's integers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bellkit import audit_records

from harness import ADMIN, ADMIN_PW, Broker, Desk

SURROGATE = '"\\ud800"'  # JSON text: a backslash escape of a lone surrogate


@pytest.fixture
def admin(broker: Broker) -> Iterator[Desk]:
    desk = Desk.login(broker, ADMIN, ADMIN_PW)
    yield desk
    desk.close()


def _post(client: Any, path: str, text: str, method: str = "POST") -> tuple[int, dict[str, Any]]:
    answer = client.request(
        method, path, content=text.encode(), headers={"content-type": "application/json"}
    )
    return answer.status_code, answer.json()


@pytest.mark.parametrize(
    "path,text",
    [
        ("/api/v1/login", '{"username": ' + SURROGATE + ', "password": "x"}'),
        ("/api/v1/login", '{"username": "admin", "password": ' + SURROGATE + "}"),
        ("/api/v1/enrol", '{"secret": ' + SURROGATE + ', "host_key": "ssh-ed25519 AAAA"}'),
    ],
)
def test_a_lone_surrogate_logged_out_is_a_clear_400(broker: Broker, path: str, text: str) -> None:
    with broker.sync_client() as client:
        status, answer = _post(client, path, text)
    assert status == 400, answer
    assert answer["error"] == "bad_json"
    assert "lone surrogate" in answer["message"]


def test_a_user_with_a_lone_surrogate_is_refused_before_it_is_on_the_record(
    broker: Broker, admin: Desk
) -> None:
    text = '{"username": "zoe", "password": ' + SURROGATE + ', "role": "technician"}'
    status, answer = _post(admin.client, "/api/v1/users", text)
    assert (status, answer["error"]) == (400, "bad_json"), answer
    status, answer = _post(admin.client, "/api/v1/jobs", '{"script": ' + SURROGATE + "}")
    assert (status, answer["error"]) == (400, "bad_json"), answer
    created = [r for r in audit_records(broker) if r["type"] == "user.created"]
    assert all(r["target"] != "zoe" for r in created)
    assert "zoe" not in {u["username"] for u in admin.client.get("/api/v1/users").json()}


@pytest.mark.parametrize("wanted", [2.0, 1.0, True, "2", None, [2]])
def test_two_admins_is_the_number_2_and_nothing_like_it(admin: Desk, wanted: object) -> None:
    before = admin.client.get("/api/v1/policy").json()["require_approval"]
    status, answer = _post(
        admin.client, "/api/v1/policy", json.dumps({"require_approval": wanted}), "PUT"
    )
    assert status == 400, answer
    after = admin.client.get("/api/v1/policy")
    assert after.status_code == 200
    assert after.json()["require_approval"] == before


def test_a_csrf_header_that_is_not_ascii_is_a_403(broker: Broker) -> None:
    desk = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        del desk.client.headers["X-CSRF-Token"]
        token = b"\xe9" + desk.csrf.encode()[1:]  # a latin-1 byte: Starlette reads "é"
        answer = desk.client.post("/api/v1/logout", headers={b"X-CSRF-Token": token})
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "csrf"
    finally:
        desk.close()


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "¹²³⁴⁵⁶"])
def test_totp_digits_that_are_not_0_to_9_are_a_wrong_code(broker: Broker, code: str) -> None:
    name = f"fay{len(code.encode())}"
    broker.add_user(name, "fay password 123")
    desk = Desk.login(broker, name, "fay password 123")
    try:
        assert desk.client.post("/api/v1/totp/setup").status_code == 200
        answer = desk.client.post("/api/v1/totp/confirm", json={"code": code})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_totp"
    finally:
        desk.close()


@pytest.mark.parametrize("after", ["99999999999999999999", str(2**63)])
def test_an_audit_position_past_the_chains_integers_is_a_400(admin: Desk, after: str) -> None:
    answer = admin.client.get("/api/v1/audit", params={"after": after})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_request"
    last = admin.client.get("/api/v1/audit", params={"after": str(2**63 - 1)})
    assert last.status_code == 200 and last.json() == []


def test_the_broker_logged_no_traceback(broker: Broker, admin: Desk) -> None:
    assert admin.client.get("/api/v1/me").status_code == 200
    log = Path(broker.log).read_text()
    assert "Traceback" not in log
    assert "UnicodeEncodeError" not in log
