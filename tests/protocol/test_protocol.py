"""Control-channel messages: round trips and hostile input (no sockets)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from allowhelp.protocol.control import (
    MAX_LINE,
    ConsentDecision,
    ConsentRequest,
    HelpCode,
    HelpRefused,
    HelpRequest,
    LineBuffer,
    SessionEnd,
    decode,
)
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import channel_subsystem, parse_channel_subsystem
from allowhelp.protocol.text import ascii_digits, plain_text

MESSAGES = [
    ConsentRequest(
        session_id="abcdefgh12",
        organisation="Org",
        technician="Ann",
        kind="screen",
        reason="why",
        phrase="a b c",
        timeout=60.0,
        help_code="123 456",
    ),
    ConsentDecision(
        session_id="abcdefgh12",
        granted=True,
        view_only=True,
        via="dialog",
        elapsed=3.5,
        prompt="text",
    ),
    SessionEnd(session_id="abcdefgh12", reason="user"),
    HelpRequest(ref="r1", message="my printer"),
    HelpCode(ref="r1", code="123 456", expires_in=1800.0),
    HelpRefused(ref="r1", reason="too many open"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.type)
def test_round_trip(message: object) -> None:
    assert decode(message.encode().strip()) == message  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "nope"}',
        b'{"type": "session.end", "session_id": "abcdefgh12"}',
        b'{"type": "session.end", "session_id": "../../etc/passwd", "reason": "user"}',
        b'{"type": "session.end", "session_id": "abcdefgh12", "reason": "reboot"}',
        b'{"type": "consent.decision", "session_id": "abcdefgh12", "granted": "yes",'
        b' "view_only": false, "via": "cli", "elapsed": 1, "prompt": ""}',
        b'{"type": "consent.decision", "session_id": "abcdefgh12", "granted": true,'
        b' "view_only": false, "via": "cli", "elapsed": -1, "prompt": ""}',
        b'{"type": "help.request", "ref": "r", "message": "' + b"x" * 600 + b'"}',
        b"\xff\xfe",
        # a lone surrogate, by escape or in its UTF-8 spelling: not Unicode text
        b'{"type": "help.request", "ref": "r", "message": "\\ud800"}',
        b'{"type": "help.request", "ref": "r", "message": "\xed\xa0\x80"}',
    ],
)
def test_hostile_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_a_consent_timeout_is_under_an_hour() -> None:
    """Every prompt on the way counts it down; a shared PC's helper takes whole
    numbers up to 65535, and a longer timeout used to end that user's sessions."""
    asked = MESSAGES[0]
    assert isinstance(asked, ConsentRequest)
    longest = replace(asked, timeout=3599.0)
    assert decode(longest.encode().strip()) == longest
    for timeout in (3600.0, 70000.0):
        with pytest.raises(ProtocolError, match="timeout"):
            decode(replace(asked, timeout=timeout).encode().strip())


def test_digits_are_0_to_9_alone() -> None:
    assert ascii_digits("0123456789")
    for text in ("", "١٢٣", "¹²³", "²", "12 ", "-1", "1.0", "\uff11\uff12"):  # last: fullwidth
        assert not ascii_digits(text), text


def test_line_buffer_splits_and_bounds() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"a"') == []
    assert buffer.feed(b':1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    with pytest.raises(ProtocolError):
        buffer.feed(b"x" * (MAX_LINE + 1))
    assert json.loads(LineBuffer().feed(SessionEnd("abcdefgh12", "user").encode())[0])


def test_subsystem_names() -> None:
    assert parse_channel_subsystem(channel_subsystem("shell", "abcdefgh12")) == (
        "shell",
        "abcdefgh12",
    )
    assert parse_channel_subsystem(channel_subsystem("screen", "abcdefgh12")) == (
        "screen",
        "abcdefgh12",
    )
    for bad in (
        "sftp",
        "allowhelp.shell",
        "allowhelp.shell/",
        "allowhelp.shell/../x",
        "allowhelp.exec/abcdefgh12",
        "allowhelp.shell/abc",
    ):
        assert parse_channel_subsystem(bad) is None


def test_plain_text_drops_controls_keeps_markup() -> None:
    hostile = "<b>hi</b>\x1b[31m red\x07\u202e txt\nline"
    assert plain_text(hostile, 100) == "<b>hi</b>[31m red txtline"
    assert plain_text(123, 10) == ""
    assert plain_text("x" * 50, 10) == "x" * 10
