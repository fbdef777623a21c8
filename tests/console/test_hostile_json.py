"""Hostile JSON on every JSON endpoint of a real broker: a clear 400, no traceback.

A body of 60,000 ``[`` (well under the 64 KiB body cap) once made Python's
parser raise ``RecursionError``, which is no ``ValueError``: every JSON
endpoint answered 500 and logged a traceback, logged in or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import ADMIN, ADMIN_PW, Broker, Desk

NESTED = b"[" * 60_000
OTHER_HOSTILE = [b"{" * 30_000, b'{"a":' * 12_000, b"\xff\xfe not utf-8", b"[]", b"1e999999"]

LOGGED_OUT = [("POST", "/api/v1/login"), ("POST", "/api/v1/enrol")]
AS_ADMIN = [
    ("POST", "/api/v1/sessions"),
    ("POST", "/api/v1/tokens"),
    ("POST", "/api/v1/totp/confirm"),
    ("POST", "/api/v1/users"),
    ("PATCH", f"/api/v1/users/{ADMIN}"),
    ("PUT", "/api/v1/policy"),
    ("POST", "/api/v1/jobs"),
    ("PATCH", "/api/v1/agents/a-nosuchmachine"),
]


@pytest.fixture
def admin(broker: Broker) -> Iterator[Desk]:
    desk = Desk.login(broker, ADMIN, ADMIN_PW)
    yield desk
    desk.close()


def _sent(
    desk_or_client: Desk | httpx.Client, method: str, path: str, body: bytes
) -> tuple[int, dict[str, str]]:
    client = desk_or_client.client if isinstance(desk_or_client, Desk) else desk_or_client
    answer = client.request(
        method, path, content=body, headers={"content-type": "application/json"}
    )
    return answer.status_code, answer.json()


@pytest.mark.parametrize("method,path", LOGGED_OUT)
def test_nested_json_logged_out_is_a_clear_400(broker: Broker, method: str, path: str) -> None:
    with broker.sync_client() as client:
        status, answer = _sent(client, method, path, NESTED)
    assert status == 400, answer
    assert answer["error"] in ("bad_json", "bad_request"), answer


@pytest.mark.parametrize("method,path", AS_ADMIN)
def test_nested_json_logged_in_is_a_clear_400(admin: Desk, method: str, path: str) -> None:
    status, answer = _sent(admin, method, path, NESTED)
    assert status == 400, answer
    assert answer["error"] == "bad_json", answer


@pytest.mark.parametrize("body", OTHER_HOSTILE)
def test_other_hostile_bodies_are_refused_plainly(admin: Desk, body: bytes) -> None:
    status, answer = _sent(admin, "POST", "/api/v1/sessions", body)
    assert status == 400, answer
    assert answer["error"] == "bad_json"


def test_the_broker_logged_no_traceback_and_still_answers(broker: Broker, admin: Desk) -> None:
    for method, path in AS_ADMIN:
        _sent(admin, method, path, NESTED)
    assert admin.client.get("/api/v1/me").status_code == 200
    log = Path(broker.log).read_text()
    assert "Traceback" not in log
    assert "RecursionError" not in log
