"""TOTP (RFC 6238) and its QR code, then two-factor login against a real broker."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allowhelp.broker.auth import totp
from allowhelp.broker.console.api.totp import ISSUER, QR_BORDER, qr_data_url
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


def test_qr_svg_decodes_to_the_uri(tmp_path: Path) -> None:
    """The SVG the page shows, drawn by librsvg and read back by zbar: the URI, exactly."""
    for tool in ("rsvg-convert", "zbarimg"):
        assert shutil.which(tool), f"{tool} is missing: scripts/install test installs it"
    uri = totp.provisioning_uri(totp.new_secret(), "carol.o'brien@site", ISSUER)
    url = qr_data_url(uri)
    assert url.startswith("data:image/svg+xml;base64,")
    svg = base64.b64decode(url.split(",", 1)[1]).decode()
    assert svg.startswith("<svg") and "<script" not in svg and "<image" not in svg
    # An ISO/IEC 18004 symbol is 4 * version + 17 modules a side; the quiet zone is 4 more.
    box = re.search(r'viewBox="0 0 (\d+) \1"', svg)
    assert box is not None, svg[:200]
    modules = int(box.group(1)) - 2 * QR_BORDER - 17
    assert modules % 4 == 0 and 1 <= modules // 4 <= 10, modules
    (tmp_path / "qr.svg").write_text(svg)
    drawn = subprocess.run(
        ["rsvg-convert", "--width", "400", "--height", "400", "-o", "qr.png", "qr.svg"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert drawn.returncode == 0, drawn.stderr
    read = subprocess.run(
        ["zbarimg", "--raw", "--quiet", "qr.png"], cwd=tmp_path, capture_output=True, check=False
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.decode().rstrip("\n") == uri


def test_qr_refuses_what_no_qr_code_holds() -> None:
    with pytest.raises(ValueError, match="too large"):
        qr_data_url("x" * 8000)


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
    assert setup["qr"] == qr_data_url(setup["uri"])  # what the page shows: the URI it holds
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
