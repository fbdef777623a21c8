"""argparse in the PC user's language: ``usage:``, its section titles and its errors.

argparse takes its own words from ``gettext.gettext`` through the module
globals ``argparse._`` and ``argparse.ngettext``, read each time a message is
made (the ``-h`` help and the section titles when a parser is built, the rest
when arguments are parsed). ``argparse_in_our_language`` points those two at
our catalog while ``allowhelp-agent`` builds and parses its command line, and
puts them back afterwards: the process's gettext domain is left alone.

``ARGPARSE_WORDS`` lists, marked for extraction, the strings of argparse
(Python 3.10 to 3.13) that a user can see; a string not listed stays English.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from allowhelp.agent.i18n import N_, current, ngettext

# argparse's msgids, exactly as argparse.py writes them; the translations keep the
# trailing space of "usage: " and the placeholders.
ARGPARSE_WORDS = (
    # i18n: the start of the usage line; keep the space at the end
    N_("usage: "),
    # i18n: a section title of --help; argparse writes ":" right after it (French: end it
    # with a space, "arguments positionnels ")
    N_("positional arguments"),
    # i18n: a section title of --help, as "positional arguments"
    N_("options"),
    # i18n: a section title of --help in Python 3.9 and older, as "positional arguments"
    N_("optional arguments"),
    N_("show this help message and exit"),
    # i18n: every error line of allowhelp-agent; keep the newline at the end
    N_("%(prog)s: error: %(message)s\n"),
    N_("argument %(argument_name)s: %(message)s"),
    N_("the following arguments are required: %s"),
    N_("unrecognized arguments: %s"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("invalid %(type)s value: %(value)r"),
    N_("expected one argument"),
    N_("expected at most one argument"),
    N_("expected at least one argument"),
    N_("ambiguous option: %(option)s could match %(matches)s"),
    N_("unknown parser %(parser_name)r (choices: %(choices)s)"),
    N_("ignored explicit argument %r"),
    N_("not allowed with argument %s"),
    N_("one of the arguments %s is required"),
)


def _ngettext(singular: str, plural: str, count: int) -> str:
    return current().ngettext(singular, plural, count)


def _gettext(message: str) -> str:
    return current().gettext(message)


def expected_arguments(count: int) -> str:
    """argparse's one plural (``nargs=N``), here so that Babel extracts it."""
    return ngettext("expected %s argument", "expected %s arguments", count) % count


@contextlib.contextmanager
def argparse_in_our_language() -> Iterator[None]:
    """Within this block argparse speaks the user's language (see the module's doc)."""
    saved = (getattr(argparse, "_"), getattr(argparse, "ngettext"))  # noqa: B009
    setattr(argparse, "_", _gettext)  # noqa: B010
    setattr(argparse, "ngettext", _ngettext)  # noqa: B010
    try:
        yield
    finally:
        setattr(argparse, "_", saved[0])  # noqa: B010
        setattr(argparse, "ngettext", saved[1])  # noqa: B010
