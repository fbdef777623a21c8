"""Hostile text made plain: the one rule for every string a peer sends us.

Control characters (terminal escapes, bidi overrides, NUL, newlines) are
dropped, so text can be shown in a terminal, a dialog or a log line without
being interpreted. Markup characters are kept: front-ends must render text as
text (the console uses textContent; dialogs disable markup).
"""

from __future__ import annotations

import unicodedata


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of 0-9, nothing else. ``str.isdigit`` alone
    also takes "²" (which ``int`` refuses) and "١٢٣" (which ``hmac.compare_digest``
    refuses in a ``str``): a peer's digits are checked with this."""
    return text.isascii() and text.isdigit()


def digits_of(text: str) -> str:
    """The 0-9 of ``text``, in order: a help code as the broker keeps it ("123 456")."""
    return "".join(ch for ch in text if ascii_digits(ch))


def format_code(digits: str) -> str:
    """A help code as the user reads it: "123 456"."""
    return f"{digits[:3]} {digits[3:]}"


def plain_text(value: object, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    kept = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C" or ch == " ")
    return kept.strip()[:limit]
