"""Errors of the certs package.

Callers catch ``CertsError`` to turn any PKI or key problem into a clean refusal;
the subclasses also derive from ``ValueError`` so that code validating input
generically (CLI argument parsing, HTTP handlers) refuses them without special cases.
"""

from __future__ import annotations

__all__ = ["CertsError", "KeyFormatError", "TokenError"]


class CertsError(Exception):
    """Base of every error raised on purpose by ``allowhelp.certs``."""


class TokenError(CertsError, ValueError):
    """An enrolment token was refused; the message is one line a user can act on."""


class KeyFormatError(CertsError, ValueError):
    """A key, certificate or fingerprint text that cannot be used as given."""
