"""The enrolment token: round trip, damage detection, and clear refusals."""

from __future__ import annotations

import base64
import hashlib
import string

import pytest

from allowhelp.certs import token as token_mod
from allowhelp.certs.errors import CertsError, TokenError
from allowhelp.certs.token import EnrolmentToken, secret_hash

FP = hashlib.sha256(b"some CA").hexdigest()
URL = "https://helpdesk.example.org:8443"
B64URL = string.ascii_letters + string.digits + "-_"


@pytest.fixture
def token() -> EnrolmentToken:
    return EnrolmentToken.new(URL, FP)


def _encode_raw(payload: bytes) -> str:
    """A token with a correct checksum around arbitrary content."""
    body = payload + token_mod._checksum(payload)
    return "ah1_" + base64.urlsafe_b64encode(body).decode().rstrip("=")


def test_round_trip(token: EnrolmentToken) -> None:
    text = token.encode()
    assert text.startswith("ah1_")
    assert EnrolmentToken.decode(text) == token
    assert len(text) < 200


@pytest.mark.parametrize(
    "url", ["https://[::1]:8443", "https://127.0.0.1", "https://bröker.example", "https://x"]
)
def test_round_trip_other_urls(url: str) -> None:
    original = EnrolmentToken.new(url, FP)
    assert EnrolmentToken.decode(original.encode()) == original


def test_every_single_character_change_is_refused(token: EnrolmentToken) -> None:
    text = token.encode()
    body_start = len("ah1_")
    for position, char in enumerate(text):
        for replacement in B64URL:
            if replacement == char:
                continue
            damaged = text[:position] + replacement + text[position + 1 :]
            with pytest.raises(TokenError) as info:
                EnrolmentToken.decode(damaged)
            if position >= body_start:
                assert str(info.value) == (
                    "enrolment token is damaged (checksum mismatch): copy it again"
                )


def test_adjacent_swaps_are_refused(token: EnrolmentToken) -> None:
    text = token.encode()
    for position in range(len("ah1_"), len(text) - 1):
        a, b = text[position], text[position + 1]
        if a == b:
            continue
        swapped = text[:position] + b + a + text[position + 2 :]
        with pytest.raises(TokenError):
            EnrolmentToken.decode(swapped)


def test_dropped_or_added_character_is_refused(token: EnrolmentToken) -> None:
    text = token.encode()
    for position in range(len("ah1_"), len(text)):
        with pytest.raises(TokenError):
            EnrolmentToken.decode(text[:position] + text[position + 1 :])
        with pytest.raises(TokenError):
            EnrolmentToken.decode(text[:position] + "A" + text[position:])


def test_whitespace_is_tolerated(token: EnrolmentToken) -> None:
    text = token.encode()
    assert EnrolmentToken.decode(f"  \n{text}\r\n\t ") == token
    wrapped = "\n".join(text[i : i + 40] for i in range(0, len(text), 40))
    assert EnrolmentToken.decode(wrapped) == token


@pytest.mark.parametrize("text", ["", "   ", "hello", "xx1_AAAA", "AH1_AAAA", "ssh-ed25519 AAAA"])
def test_wrong_prefix(text: str) -> None:
    with pytest.raises(TokenError, match=r"^this is not an allowhelp enrolment token$"):
        EnrolmentToken.decode(text)


def test_newer_version_prefix(token: EnrolmentToken) -> None:
    newer = "ah2_" + token.encode()[4:]
    with pytest.raises(TokenError, match="newer allowhelp"):
        EnrolmentToken.decode(newer)


@pytest.mark.parametrize("body", ["", "A", "AAAAA", "!!!!", "ab+/", "AAAA===", "ab cd=="])
def test_malformed(body: str) -> None:
    with pytest.raises(TokenError, match=r"^enrolment token is malformed"):
        EnrolmentToken.decode("ah1_" + body.replace(" ", "."))


def test_huge_input_is_refused_quickly() -> None:
    with pytest.raises(TokenError, match=r"^enrolment token is malformed$"):
        EnrolmentToken.decode("ah1_" + "A" * 1_000_000)


def test_longest_valid_token_round_trips() -> None:
    url = "https://" + "é" * 490
    original = EnrolmentToken(url=url, secret="s" * 255, ca_fingerprint=FP)
    assert EnrolmentToken.decode(original.encode()) == original


def test_good_checksum_but_bad_content_is_malformed() -> None:
    secret = b"s" * 43
    cases = [
        b"\x00" * 10,  # too short for the fingerprint
        bytes.fromhex(FP) + bytes([43]) + secret,  # no URL
        bytes.fromhex(FP) + bytes([43]) + secret + b"http://x.example",  # not https
        bytes.fromhex(FP) + bytes([5]) + b"short" + b"https://x.example",  # weak secret
        bytes.fromhex(FP) + bytes([43]) + secret + b"https://x.example\xff",  # bad UTF-8
    ]
    for payload in cases:
        with pytest.raises(TokenError, match=r"^enrolment token is malformed") as info:
            EnrolmentToken.decode(_encode_raw(payload))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://helpdesk.example.org",
        "ftp://helpdesk.example.org",
        "helpdesk.example.org",
        "https://",
        "https://user:pw@helpdesk.example.org",
        "https://helpdesk.example.org/path",
        "https://helpdesk.example.org?x=1",
        "https://helpdesk.example.org#frag",
        "https://helpdesk.example.org:99999",
        "https://helpdesk example.org",
        "https://[::1",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="broker URL"):
        EnrolmentToken.new(url, FP)
    with pytest.raises(ValueError, match="broker URL"):
        EnrolmentToken(url=url, secret="s" * 43, ca_fingerprint=FP)


def test_new_normalises_and_makes_fresh_secrets() -> None:
    colon_fp = ":".join(FP[i : i + 2] for i in range(0, 64, 2)).upper()
    first = EnrolmentToken.new("HTTPS://helpdesk.example.org:8443/", colon_fp)
    second = EnrolmentToken.new(URL, FP)
    assert first.url == URL
    assert first.ca_fingerprint == FP
    assert first.secret != second.secret
    assert len(first.secret) >= 43
    assert set(first.secret) <= set(B64URL)


@pytest.mark.parametrize("fp", ["", FP[:-2], FP.upper(), FP[:-1] + "g", FP + "00"])
def test_bad_fingerprints_are_refused(fp: str) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        EnrolmentToken(url=URL, secret="s" * 43, ca_fingerprint=fp)


@pytest.mark.parametrize("secret", ["", "s" * 42, "s" * 256, "a+b/" * 12, "é" * 43])
def test_weak_or_odd_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        EnrolmentToken(url=URL, secret=secret, ca_fingerprint=FP)


def test_repr_hides_the_secret(token: EnrolmentToken) -> None:
    assert token.secret not in repr(token)
    assert URL in repr(token)


def test_secret_hash(token: EnrolmentToken) -> None:
    digest = secret_hash(token.secret)
    assert digest == hashlib.sha256(token.secret.encode()).hexdigest()
    assert token.secret not in digest
    assert len(digest) == 64


def test_token_error_is_both_certs_and_value_error() -> None:
    assert issubclass(TokenError, CertsError)
    assert issubclass(TokenError, ValueError)
