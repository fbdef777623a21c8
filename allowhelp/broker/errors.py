"""The broker's exception tree.

Library errors (asyncssh, sqlite3, websockets) are translated into these at the
module that talks to the library, with ``raise ... from exc``, so callers handle
one family and users see one kind of message.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""


class StoreError(BrokerError):
    """The database could not be read or written."""


class AuditUnavailable(BrokerError):
    """An audit record could not be committed; the action it guards must not happen."""


class AuditCorrupt(BrokerError):
    """The audit file is not one this broker can read (wrong schema, not SQLite)."""


class AuthError(BrokerError):
    """Login refused. The message is the same for every cause on purpose."""


class EnrolmentError(BrokerError):
    """An enrolment token was refused; the message says why, for the agent's user."""


class TunnelError(BrokerError):
    """The SSH tunnel to an agent failed."""
