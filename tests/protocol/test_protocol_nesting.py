"""Deeply nested and other hostile JSON: one error type, a clear message, no traceback.

Pure logic (no sockets): ``decode`` and ``parse_json`` are what the broker's
and the agent's control-channel readers and the agent's local socket call.
"""

from __future__ import annotations

import contextlib
import json
import random

import pytest

from allowhelp.protocol.control import MAX_LINE, SessionEnd, decode
from allowhelp.protocol.hostile_json import MAX_DEPTH, ProtocolError, parse_json, too_deep

END = b'{"type": "session.end", "session_id": "abcdefgh12", "reason": "user"'


def end_with(extra: bytes) -> bytes:
    """A valid session.end with one more (unknown, so ignored) field."""
    return END + b', "extra": ' + extra + b"}"


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"[" * 60000, "too long"),  # the body: over MAX_LINE before anything else
        (b"[" * (MAX_LINE - 1), "nested too deeply"),
        (b"{" * 12000, "nested too deeply"),
        (b'{"a":' * 3000, "nested too deeply"),
        (end_with(b"[" * 8000 + b"]" * 8000), "nested too deeply"),
        (end_with(b"[[[[" + b"]]]]"), "nested too deeply"),  # object + 4 = 5 levels
        (b'["\\\\", ' + b"[" * 10 + b"]" * 10 + b"]", "nested too deeply"),  # "\\" ends
        (b'{"a": 1' + b"9" * 5000 + b"}", "not JSON"),  # Python's int digit limit
        (b'{"type": "hello"' + b"\xc0\xaf}", "not UTF-8"),  # overlong '/'
        (b"\xef\xbb\xbf" + END + b"}", "not JSON"),  # a BOM
        (b"NaN", "not a JSON object"),
    ],
    ids=lambda v: v[:24] if isinstance(v, bytes) else v,
)
def test_hostile_nesting_is_a_protocol_error_with_a_reason(line: bytes, said: str) -> None:
    with pytest.raises(ProtocolError, match=said):
        decode(line)


def test_the_parser_s_own_recursion_limit_is_a_protocol_error_too() -> None:
    """With the cheap depth check out of the way, RecursionError still never escapes."""
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_json(b"[" * 100000, "control line", limit=10**9)


@pytest.mark.parametrize(
    "extra",
    [
        b"[[[1]]]",  # object + 3 = 4 levels: room for fields a newer peer adds
        b'"[[[[[[[[[[{{{{{{{{"',  # brackets in a string are text
        b'"\\"[[[[[[[[[["',  # an escaped quote does not end the string
        b'"\\\\"',  # an escaped backslash does not escape the closing quote
        b'["]]]]", "[[[[[[", "\\\\", "\\""]',
    ],
)
def test_flat_enough_messages_still_decode(extra: bytes) -> None:
    assert decode(end_with(extra)) == SessionEnd(session_id="abcdefgh12", reason="user")


def test_escaped_backslash_then_quote_ends_the_string() -> None:
    """``"\\\\"`` is a complete string: the brackets after it are structure again."""
    assert too_deep(b'["\\\\", ' + b"[" * 5 + b"]" * 5 + b"]")
    assert not too_deep(b'["\\\\[[[[[[[[["]')


LEAVES = ["", "[", "]", "{", "}", '"', "\\", '\\"', '[{"\\}]', "é[", "\\\\[", 1, 2.5, True, None]
KEYS = ['k"[', "{", "]", "a\\", "\\\\", "z"]


def random_value(rng: random.Random, depth: int) -> object:
    """Random JSON whose strings are full of what a careless depth count trips on."""
    if depth <= 0 or rng.random() < 0.25:
        return rng.choice(LEAVES)
    if rng.random() < 0.5:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {
        rng.choice(KEYS) + str(n): random_value(rng, depth - 1) for n in range(rng.randint(0, 3))
    }


def real_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((real_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((real_depth(v) for v in value.values()), default=0)
    return 0


def test_the_depth_check_agrees_with_the_parser_on_random_json() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        value = random_value(rng, rng.randint(0, 9))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        limit = rng.randint(0, 8)
        assert too_deep(text, limit) == (real_depth(value) > limit), text


def test_random_garbage_only_ever_raises_protocol_error() -> None:
    rng = random.Random(7)
    alphabet = b'[]{}",:\\ 0123456789.eE-+truefalsnul\n\t\xff\xc3\xa9'
    for _ in range(3000):
        line = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        with contextlib.suppress(ProtocolError):  # and nothing else
            decode(line)


def test_a_line_full_of_escapes_is_one_string() -> None:
    assert 1 <= MAX_DEPTH <= 8  # control messages are flat
    line = b'"' + b'\\"[' * (MAX_LINE // 3) + b'"'
    assert not too_deep(line)
    assert parse_json(line, "control line") == '"[' * (MAX_LINE // 3)
