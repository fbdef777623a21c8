"""The doorbell's protocol additions: ``Hello.doorbell`` and ``doorbell.key`` (no sockets)."""

from __future__ import annotations

import json

import pytest

from allowhelp.protocol.control import MESSAGE_TYPES, DoorbellKey, Hello, decode, hello_from
from allowhelp.protocol.control_limits import LIMITS
from allowhelp.protocol.hostile_json import ProtocolError


def _hello(**extra: object) -> dict[str, object]:
    return {"hostname": "pc1", "os": "Linux", "user": "ann", "version": "1.0", **extra}


def test_doorbell_key_round_trips_and_is_registered() -> None:
    key = DoorbellKey(token="A" * 43)
    assert decode(key.encode().strip()) == key
    assert MESSAGE_TYPES["doorbell.key"] is DoorbellKey
    assert LIMITS["token"] == 64


@pytest.mark.parametrize("token", ["", "x" * 65, 5])
def test_doorbell_key_refuses_an_empty_long_or_odd_token(token: object) -> None:
    with pytest.raises(ProtocolError):
        decode(json.dumps({"type": "doorbell.key", "token": token}).encode())


@pytest.mark.parametrize("state", ["", "need", "have"])
def test_hello_carries_the_doorbell_state(state: str) -> None:
    hello = Hello(**_hello(doorbell=state))  # type: ignore[arg-type]
    assert decode(hello.encode().strip()).doorbell == state  # type: ignore[attr-defined]
    assert hello_from(hello.to_json()) == hello


def test_an_older_hello_has_no_doorbell() -> None:
    assert hello_from(_hello()).doorbell == ""


@pytest.mark.parametrize(
    "raw",
    [
        _hello(doorbell="always"),
        _hello(doorbell=True),
        _hello(type="job.run"),
        {"hostname": "pc1"},
        ["not", "an", "object"],
        _hello(hostname="h" * 300),
    ],
)
def test_hello_from_refuses_what_decode_refuses(raw: object) -> None:
    with pytest.raises(ProtocolError):
        hello_from(raw)


def test_to_json_is_what_encode_sends() -> None:
    hello = Hello(**_hello(doorbell="have"))  # type: ignore[arg-type]
    assert json.loads(hello.encode()) == hello.to_json()
    assert hello.to_json()["type"] == "hello"
