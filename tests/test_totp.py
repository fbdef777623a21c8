"""TOTP (RFC 6238) and its QR code, then two-factor login against a real broker."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from allowhelp.broker import qr, totp
from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Broker, Fleet
from wallkit import Console, enrol_totp

# RFC 6238 appendix B: the SHA-1 seed and the 8-digit codes at these times.
RFC_SEED = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("when", "code"), RFC_VECTORS)
def test_rfc6238_vectors(when: int, code: str) -> None:
    key = base64.b32decode(RFC_SEED)
    assert totp.hotp(key, totp.step_at(when), digits=8) == code


def test_matching_step_accepts_one_step_of_drift_only() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    for drift in (-30, 0, 30):
        code = totp.code_at(secret, now + drift)
        assert totp.matching_step(secret, code, now) == totp.step_at(now + drift)
    assert totp.matching_step(secret, totp.code_at(secret, now + 90), now) is None
    assert totp.matching_step(secret, "12345", now) is None
    assert totp.matching_step(secret, "abcdef", now) is None


def test_provisioning_uri_and_recovery_codes() -> None:
    uri = totp.provisioning_uri("JBSWY3DPEHPK3PXP", "alice@site", "allowhelp")
    assert uri.startswith("otpauth://totp/allowhelp:alice@site?secret=JBSWY3DPEHPK3PXP&")
    assert "issuer=allowhelp" in uri and "period=30" in uri
    codes = totp.new_recovery_codes()
    assert len(set(codes)) == 10
    assert all(totp.looks_like_recovery_code(c) for c in codes)
    assert totp.recovery_hash(codes[0].upper()) == totp.recovery_hash(codes[0])
    assert not totp.looks_like_recovery_code("123456")


def matrix_hash(matrix: qr.Matrix) -> str:
    text = "\n".join("".join("1" if v else "0" for v in row) for row in matrix)
    return hashlib.sha256(text.encode()).hexdigest()


# Matrices made by an independent encoder (python-qrcode 8, level M, same mask).
GOLDEN = [
    (b"allowhelp", 0, 21, "33ff63aee8b1fed8254089362a68af3b7b7c3662151774b90bb65aabaabe1fca"),
    (
        b"otpauth://totp/allowhelp:alice?secret=JBSWY3DPEHPK3PXP&issuer=allowhelp",
        3,
        37,
        "aacba9db601ddecdb23100d8d1a1df0029d5dc3c9a6067d48eeb4196b3fdbd1d",
    ),
    (bytes(range(200)), 6, 57, "7668888f62bee9ccd294cbd2732244672864b67a36c1c437d980c9a7dcd79f38"),
]


@pytest.mark.parametrize(("data", "mask", "size", "digest"), GOLDEN)
def test_qr_matches_an_independent_encoder(data: bytes, mask: int, size: int, digest: str) -> None:
    matrix = qr.encode(data, mask)
    assert len(matrix) == size and all(len(row) == size for row in matrix)
    assert matrix_hash(matrix) == digest


def test_qr_svg_is_plain_markup_and_refuses_oversize() -> None:
    url = qr.svg_data_url("otpauth://totp/allowhelp:bob?secret=ABC")
    assert url.startswith("data:image/svg+xml;base64,")
    svg = base64.b64decode(url.split(",", 1)[1]).decode()
    assert svg.startswith("<svg") and "<script" not in svg
    with pytest.raises(ValueError, match="too much data"):
        qr.encode(b"x" * 300)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    fleet = Fleet(tmp_path_factory.mktemp("totp"))
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    broker.add_user(TECH, TECH_PW)
    for name in ("carol", "dave", "erin"):
        broker.add_user(name, f"{name} password 123")
    yield broker
    fleet.close()


def login(broker: Broker, user: str, password: str, code: str | None = None) -> tuple[int, str]:
    with broker.sync_client() as client:
        body = {"username": user, "password": password}
        if code is not None:
            body["totp"] = code
        answer = client.post("/api/v1/login", json=body)
        return answer.status_code, answer.json().get("error", "")


def test_setup_shows_a_qr_code_and_login_then_needs_the_code(broker: Broker) -> None:
    carol = Console.login(broker, "carol", "carol password 123")
    setup = carol.post("/api/v1/totp/setup").json()
    assert setup["qr"].startswith("data:image/svg+xml;base64,")
    assert setup["uri"] == totp.provisioning_uri(setup["secret"], "carol", "allowhelp")
    wrong = totp.code_at(setup["secret"], time.time() + 3600)
    refused = carol.post("/api/v1/totp/confirm", json={"code": wrong})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_totp"
    assert carol.get("/api/v1/me").json()["totp_enrolled"] is False
    secret, codes, step = enrol_totp(carol)
    assert len(codes) == 10
    assert carol.get("/api/v1/me").json()["totp_enrolled"] is True
    assert carol.get("/api/v1/totp").json()["recovery_codes_left"] == 10
    assert carol.post("/api/v1/totp/setup").status_code == 409  # no silent re-enrolment
    carol.close()
    assert login(broker, "carol", "carol password 123") == (401, "totp_required")
    # The confirmation used this step: its code cannot log in.
    used = totp.code_at(secret, step * totp.PERIOD)
    assert login(broker, "carol", "carol password 123", used) == (401, "invalid_totp")
    following = totp.code_at(secret, (step + 1) * totp.PERIOD)
    assert login(broker, "carol", "carol password 123", following)[0] == 200
    assert login(broker, "carol", "carol password 123", following) == (401, "invalid_totp")
    # A wrong password with a right code still says only "wrong username or password".
    later = totp.code_at(secret, (step + 2) * totp.PERIOD)
    assert login(broker, "carol", "wrong password here", later) == (401, "invalid_credentials")
    failed = [r for r in audit_records(broker) if r["type"] == "auth.login.failed"]
    assert any(r["details"]["reason"] == "totp reused" for r in failed)
    assert secret not in str(audit_records(broker))  # never a seed in the audit log


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    admin = Console.login(broker, ADMIN, ADMIN_PW)
    try:
        records: list[dict[str, Any]] = admin.get("/api/v1/audit").json()
        return records
    finally:
        admin.close()


def test_recovery_code_works_once(broker: Broker) -> None:
    dave = Console.login(broker, "dave", "dave password 123")
    _, codes, _ = enrol_totp(dave)
    dave.close()
    assert login(broker, "dave", "dave password 123", codes[0].upper())[0] == 200
    assert login(broker, "dave", "dave password 123", codes[0]) == (401, "invalid_totp")
    assert login(broker, "dave", "dave password 123", "zzzz-zzzz-zz") == (401, "invalid_totp")
    assert login(broker, "dave", "dave password 123", codes[1])[0] == 200


def test_admin_resets_totp_and_can_require_it_for_all(broker: Broker) -> None:
    admin = Console.login(broker, ADMIN, ADMIN_PW)
    erin = Console.login(broker, "erin", "erin password 123")
    enrol_totp(erin)
    erin.close()
    assert login(broker, "erin", "erin password 123") == (401, "totp_required")
    tech = Console.login(broker, TECH, TECH_PW)
    assert tech.post("/api/v1/users/erin/reset-totp").status_code == 403  # admins only
    assert tech.client.put("/api/v1/policy", json={"require_totp": True}).status_code == 403
    assert admin.post("/api/v1/users/erin/reset-totp").status_code == 200
    assert login(broker, "erin", "erin password 123")[0] == 200
    try:
        assert admin.client.put("/api/v1/policy", json={"require_totp": True}).json() == {
            "require_totp": True
        }
        # Alice has no TOTP: her existing session may only enrol it now.
        assert tech.get("/api/v1/agents").json()["error"] == "totp_enrolment_required"
        me = tech.get("/api/v1/me").json()
        assert me["must_enrol_totp"] is True and me["require_totp"] is True
        enrol_totp(tech)
        assert tech.get("/api/v1/agents").status_code == 200
    finally:
        admin.client.put("/api/v1/policy", json={"require_totp": False})
        admin.close()
        tech.close()
    types = broker.audit_types()
    for kind in ("auth.totp.enrolled", "auth.totp.reset", "auth.policy.changed"):
        assert kind in types
