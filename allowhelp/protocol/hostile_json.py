"""Hostile JSON text to a value: the one way every reader of a peer's JSON fails.

Used by the control channel at both ends (``control.py``), the helper socket
(``helper.py``) and the agent's local control socket. A text nested deeper than
its reader allows is refused before the JSON parser sees it (``[`` x 16000 would
otherwise end in a RecursionError), and every parser failure becomes a one-line
``ProtocolError`` too: nothing else escapes.
"""

from __future__ import annotations

import json
import re

# Control messages are flat objects; a little room for fields a newer peer may
# add (unknown fields are ignored), far below anything that strains a parser.
MAX_DEPTH = 4


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the channel is closed on it."""


# What the nesting scan looks at: brackets, and what starts, escapes or ends a string.
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = b"[{", b"]}", ord('"'), ord("\\")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text opens more than ``limit`` arrays or objects inside each other.

    One pass over the structural characters only, stopping at the first level
    too many; brackets inside strings do not count. Text that is not JSON at
    all may pass: the parser refuses it next.
    """
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(data):
        pos = match.start()
        if pos == escaped_at:
            continue
        char = data[pos]
        if in_string:
            if char == _BACKSLASH:
                escaped_at = pos + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSE:
            depth -= 1
    return False


def lone_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a string that is not Unicode text: a lone
    surrogate, which ``json.loads`` takes from a ``\\ud800`` escape (or, given bytes,
    from their UTF-8 spelling) and which no UTF-8 encoder, SQLite or argon2 then takes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(data: bytes, what: str, limit: int = MAX_DEPTH) -> object:
    """Hostile JSON text to a value, or a one-line ``ProtocolError`` saying why not."""
    try:
        text = data.decode("utf-8")  # strict: then no byte of a character looks like a bracket
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
    if too_deep(data, limit):
        raise ProtocolError(f"{what} is nested too deeply (more than {limit} levels)")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, the int digit limit
        raise ProtocolError(f"{what} is not JSON") from exc
    if lone_surrogate(value):
        raise ProtocolError(f"{what} holds a string that is not Unicode text (a lone surrogate)")
    return value
