"""Small pure pieces: settings, passwords, backoff, phrases."""

from __future__ import annotations

from pathlib import Path

import pytest

from allowhelp.agent.tunnel import backoff_delay, check_reconnect_cap
from allowhelp.broker.auth.passwords import check_new_password, hash_password, verify_password
from allowhelp.broker.model.phrase import WORDS, verification_phrase
from allowhelp.broker.settings import BrokerSettings, check_public_url, parse_hostport
from allowhelp.broker.tunnel.enrolment import parse_ttl


def test_hostport_parsing() -> None:
    assert parse_hostport("127.0.0.1:0", "x") == ("127.0.0.1", 0)
    assert parse_hostport("[::1]:8443", "x") == ("::1", 8443)
    for bad in ("8443", ":8443", "host:", "host:99999", "host:abc"):
        with pytest.raises(ValueError, match="x"):
            parse_hostport(bad, "x")


def test_public_url() -> None:
    assert check_public_url("https://Help.Example.org:8443/") == "https://help.example.org:8443"
    for bad in ("http://x", "https://", "https://x/path", "ftp://x"):
        with pytest.raises(ValueError):
            check_public_url(bad)


def test_settings_validation(tmp_path: Path) -> None:
    settings = BrokerSettings.build(tmp_path, https="127.0.0.1:0", tunnel="127.0.0.1:0")
    assert settings.consent_timeout == 60.0
    with pytest.raises(ValueError, match="consent-timeout"):
        BrokerSettings.build(tmp_path, consent_timeout=0.5)
    with pytest.raises(ValueError, match="syslog"):
        BrokerSettings.build(tmp_path, syslog_url="http://collector:514")
    with pytest.raises(ValueError, match="organisation"):
        BrokerSettings.build(tmp_path, organisation=" ")


def test_passwords() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("x", "garbage")
    assert hash_password("same password!") != hash_password("same password!")  # salted
    for bad in ("", "   ", "short"):
        with pytest.raises(ValueError):
            check_new_password(bad)


def test_backoff_is_full_jitter_and_capped() -> None:
    upper = [backoff_delay(n, 30.0, rng=lambda lo, hi: hi) for n in range(12)]
    assert upper[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(upper) == 30.0
    assert backoff_delay(50, 30.0, rng=lambda lo, hi: lo) == 0.0
    with pytest.raises(ValueError):
        check_reconnect_cap(0.1)


def test_ttl() -> None:
    assert parse_ttl("1h") == 3600 and parse_ttl("30m") == 1800 and parse_ttl("7d") == 604800
    for bad in ("1y", "h", "0m", "90d", "-1h"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_phrases() -> None:
    assert len(set(WORDS)) == len(WORDS) >= 250
    assert all(word.isalpha() and word.islower() for word in WORDS)
    assert len(verification_phrase().split()) == 3
