"""allowhelp: consent-first remote assistance."""

from __future__ import annotations

import warnings

__version__ = "0.1.0"

# asyncssh imports cryptography's DSA classes at import time (to read old keys);
# cryptography 47 and later warn about DSA on that import. allowhelp never makes,
# offers or accepts a DSA key (Ed25519 and ECDSA only), so the warning says nothing
# to a user: it is silenced here, before any module of ours imports asyncssh.
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=UserWarning, module=r"asyncssh\..*"
)
