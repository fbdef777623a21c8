"""allowhelp: consent-first remote assistance."""

from __future__ import annotations

__version__ = "0.1.0"
