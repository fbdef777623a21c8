"""Hostile text made plain: the one rule for every string a peer sends us.

Control characters (terminal escapes, bidi overrides, NUL, newlines) are
dropped, so text can be shown in a terminal, a dialog or a log line without
being interpreted. Markup characters are kept: front-ends must render text as
text (the console uses textContent; dialogs disable markup).
"""

from __future__ import annotations

import unicodedata


def plain_text(value: object, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    kept = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C" or ch == " ")
    return kept.strip()[:limit]
