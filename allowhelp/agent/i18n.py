"""The PC user's language: gettext catalogs chosen from the session's locale.

The language comes from the environment exactly as gettext looks for it:
the first of ``LANGUAGE`` (a colon-separated list), ``LC_ALL``,
``LC_MESSAGES``, ``LANG`` that is set; within it, the first language that has
a catalog here. ``C``/``POSIX`` or an unknown language: English, the source
strings. Only Python's ``gettext`` at run time; the ``.po`` files are the
sources, the ``.mo`` files next to them are compiled from them by
``scripts/i18n compile`` (``scripts/check`` fails when one is stale or a
string has no translation: docs/i18n.md).

What the organisation wrote and what the technician typed (their name, the
reason) are never translated: they are arguments, shown as typed.
"""

from __future__ import annotations

import contextlib
import functools
import gettext
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path

DOMAIN = "allowhelp"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
SOURCE_LANGUAGE = "en"
# The languages with a catalog; each one is complete (scripts/check).
LANGUAGES = ("en", "fr", "nl", "de")
ENVIRONMENT = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def user_language(env: Mapping[str, str] | None = None) -> str:
    """The two-letter code of the first wanted language we speak; "en" otherwise."""
    env = os.environ if env is None else env
    for variable in ENVIRONMENT:
        value = env.get(variable, "")
        if value:
            for wanted in value.split(":"):
                code = _code(wanted)
                if code in ("c", "posix"):
                    return SOURCE_LANGUAGE
                if code in LANGUAGES:
                    return code
            return SOURCE_LANGUAGE
    return SOURCE_LANGUAGE


def _code(locale_name: str) -> str:
    """``fr_BE.UTF-8@euro`` → ``fr``; ``nl-BE`` → ``nl``."""
    head = locale_name.strip().split(".")[0].split("@")[0]
    return head.replace("-", "_").split("_")[0].lower()


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of ``language``; English (no translation) when there is none."""
    if language == SOURCE_LANGUAGE or language not in LANGUAGES:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)


# Set while the machine service answers a user (their helper said their language):
# its own environment is root's C locale, not theirs.
_speaking: ContextVar[str] = ContextVar("allowhelp_speaking", default="")


@contextlib.contextmanager
def speaking(language: str) -> Iterator[None]:
    """Within this block, ``_`` speaks ``language`` ("": the environment's)."""
    token = _speaking.set(language)
    try:
        yield
    finally:
        _speaking.reset(token)


def current() -> gettext.NullTranslations:
    """The catalog of the user being answered, else of this process's user (read
    from the environment each time)."""
    return translations(_speaking.get() or user_language())


def _(message: str) -> str:
    """``message`` in this process's user's language."""
    return current().gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    return current().ngettext(singular, plural, count)


def N_(message: str) -> str:
    """Marks a string for extraction; it is translated where it is shown."""
    return message
