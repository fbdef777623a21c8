"""The field checks the control channel and the helper socket share (``fields.py``),
each with its own bounds: every bound is tried at its edge, from both decoders, so a
value one past it is refused with a one-line ``ProtocolError`` and the edge itself
still passes (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from allowhelp.protocol import control, helper
from allowhelp.protocol.hostile_json import ProtocolError

ID = "abcdefgh12"
JOB: dict[str, Any] = {"type": "job.result", "job_id": ID, "state": "done", "exit_code": 0}
JOB |= {"output": "", "started": 1.0, "finished": 2.0}
TRANSFER: dict[str, Any] = {"type": "files.transfer", "session_id": ID, "path": "/a"}
TRANSFER |= {"direction": "upload", "size": 1, "status": "done"}
ASK: dict[str, Any] = {"type": "consent.request", "session_id": ID, "organisation": "O"}
ASK |= {"technician": "T", "kind": "shell", "reason": "r", "phrase": "a b c", "timeout": 30}
DECIDED: dict[str, Any] = {"type": "consent.decision", "session_id": ID, "granted": True}
DECIDED |= {"view_only": False, "via": "cli", "elapsed": 1, "prompt": ""}
OPEN: dict[str, Any] = {"type": "open", "session_id": ID, "kind": "shell", "term": "xterm"}
OPEN |= {"cols": 80, "rows": 24, "view_only": False}

Decoder = Callable[[bytes], object]
# (decoder, a valid message, the field, a value at the edge, the value one past it)
EDGES: list[tuple[str, Decoder, dict[str, Any], str, object, object]] = [
    ("exit code", control.decode, JOB, "exit_code", 2**31 - 1, 2**31),
    ("exit code below", control.decode, JOB, "exit_code", -1, -2),
    ("a file's bytes", control.decode, TRANSFER, "size", 2**63 - 1, 2**63),
    ("a duration", control.decode, DECIDED, "elapsed", 999_999.5, 1e6),
    ("a consent's timeout", control.decode, ASK, "timeout", 3599.5, 3600),
    ("a point in time", control.decode, JOB, "finished", 1e11 - 1, 1e11),
    ("a text", control.decode, ASK, "reason", "r" * 500, "r" * 501),
    ("a kind", control.decode, ASK, "kind", "admin-shell", "root-shell"),
    ("an invitation's mode", control.decode, ASK, "mode", "observe", "owner"),
    ("the session joined", control.decode, ASK, "joins", "", "not an id"),
    ("the session id", control.decode, ASK, "session_id", ID, ""),
    ("a terminal's width", helper.decode, OPEN, "cols", 65535, 65536),
    ("a terminal's height", helper.decode, OPEN, "rows", -1024, -1025),
    ("a helper's kind", helper.decode, OPEN, "kind", "screen", "root-shell"),
    ("a helper's text", helper.decode, OPEN, "term", "x" * 64, "x" * 65),
    ("a helper's session id", helper.decode, OPEN, "session_id", ID, "short"),
]


def line(message: dict[str, Any], **change: object) -> bytes:
    return json.dumps({**message, **change}).encode()


@pytest.mark.parametrize(
    ("decode", "message", "field", "edge", "past"),
    [edge[1:] for edge in EDGES],
    ids=[edge[0] for edge in EDGES],
)
def test_a_bound_holds_at_its_edge_and_refuses_one_past_it(
    decode: Decoder, message: dict[str, Any], field: str, edge: object, past: object
) -> None:
    decoded = decode(line(message, **{field: edge}))
    assert getattr(decoded, field) == edge
    with pytest.raises(ProtocolError, match=rf"^{field} ") as refused:
        decode(line(message, **{field: past}))
    assert "\n" not in str(refused.value)


DECISION: dict[str, Any] = {"type": "consent.decision", "session_id": ID, "granted": True}
DECISION |= {"view_only": False, "via": "cli", "elapsed": 1, "prompt": "p"}
ALLOW: dict[str, Any] = {"type": "allow", "session_id": ID, "view_only": False, "via": "cli"}
TYPES: list[tuple[str, Decoder, dict[str, Any], str, object]] = [
    ("control: a number for true or false", control.decode, DECISION, "view_only", 1),
    ("control: a string for true or false", control.decode, DECISION, "granted", "true"),
    ("control: a number for an id", control.decode, DECISION, "session_id", 12),
    ("control: null for a kind", control.decode, ASK, "kind", None),
    ("control: a list for a text", control.decode, DECISION, "prompt", ["p"]),
    ("control: a string for a number", control.decode, DECISION, "elapsed", "1"),
    ("helper: a number for true or false", helper.decode, ALLOW, "view_only", 1),
    ("helper: a number for an id", helper.decode, ALLOW, "session_id", 12),
    ("helper: a float for a whole number", helper.decode, OPEN, "cols", 80.0),
    ("helper: null for a kind", helper.decode, OPEN, "kind", None),
]


@pytest.mark.parametrize(
    ("decode", "message", "field", "value"),
    [case[1:] for case in TYPES],
    ids=[case[0] for case in TYPES],
)
def test_a_value_of_another_type_is_refused(
    decode: Decoder, message: dict[str, Any], field: str, value: object
) -> None:
    assert decode(line(message)) is not None  # the message itself is fine
    with pytest.raises(ProtocolError, match=rf"^{field} must be"):
        decode(line(message, **{field: value}))


def test_only_the_helper_socket_takes_an_empty_session_id() -> None:
    """``end`` without an id ends all of the caller's sessions; no control message
    names a session by ""."""
    assert helper.decode(line({"type": "end", "session_id": ""})) == helper.End("")
    with pytest.raises(ProtocolError, match=r"^session_id is malformed"):
        control.decode(line({"type": "session.end", "session_id": "", "reason": "user"}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, -0.5])
def test_a_duration_that_is_no_number_in_range_is_refused(value: float) -> None:
    with pytest.raises(ProtocolError, match=r"^elapsed must be a number from 0 to 1e\+06$"):
        control.decode(json.dumps({**DECIDED, "elapsed": value}).encode())
