"""The broker's exception tree: every error it raises on purpose is a ``BrokerError``.

Library errors (asyncssh, sqlite3, websockets, json) are translated into these
at the module that talks to the library, with ``raise ... from exc``, so
callers handle one family and users see one kind of message. Nothing here
knows HTTP or WebSocket codes: ``console/answers.py`` maps each class to its
status and close code, in one table.

Each error carries a short machine-readable ``code`` (the API's ``error``
field) and a message fit for the person who caused it.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


# What a caller asked for cannot be done as asked.


class BadRequest(BrokerError):
    """The request is malformed or a value is out of range."""

    code = "bad_request"


class Unauthenticated(BrokerError):
    """Nobody is logged in on this request."""

    code = "unauthenticated"


class Forbidden(BrokerError):
    """The caller is known but may not do this."""

    code = "forbidden"


class NotFound(BrokerError):
    """No such thing, or none the caller may see (the same answer on purpose)."""

    code = "not_found"


class Conflict(BrokerError):
    """The thing is not in a state where this can happen (already over, exists...)."""

    code = "conflict"


class TooLarge(BrokerError):
    """A body, frame or message is over its limit."""

    code = "too_large"


class AgentUnreachable(BrokerError):
    """The PC is offline, or did not take or answer what the broker sent it."""

    code = "agent_unreachable"


class AgentTimeout(AgentUnreachable):
    """The PC is connected but did not answer one call in time (a stuck network
    mount under its sftp-server): that request ends, the session goes on."""

    code = "pc_not_answering"


class IllegalTransition(Conflict):
    """A move the session lifecycle does not allow, e.g. ended → active (a race lost)."""

    code = "illegal_transition"


# The broker's own parts.


class StoreError(BrokerError):
    """The database could not be read or written."""

    code = "store_unavailable"


class AuditUnavailable(BrokerError):
    """An audit record could not be committed; the action it guards must not happen."""

    code = "audit_unavailable"


class AuditCorrupt(BrokerError):
    """The audit file is not one this broker can read (wrong schema, not SQLite)."""

    code = "audit_corrupt"


class AuthError(BrokerError):
    """Login refused. The message is the same for every cause on purpose."""

    code = "invalid_credentials"


class EnrolmentError(BrokerError):
    """An enrolment token was refused; the message says why, for the agent's user."""

    code = "enrolment_refused"


class EnrolmentThrottled(EnrolmentError):
    """Too many refused enrolments from one address: wait ``retry_after`` seconds."""

    code = "throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many refused enrolments from this address: try again in {retry_after} s"
        )
        self.retry_after = retry_after


class TunnelError(BrokerError):
    """The SSH tunnel to an agent failed."""

    code = "tunnel_error"


class BackupError(BrokerError):
    """A backup cannot be taken, or a backup file cannot be restored (command line only)."""

    code = "backup_refused"


# A relay between a technician's socket and a PC's channel that cannot go on.


class RelayError(BrokerError):
    """The relay stopped because something broke; the message says what, plainly."""

    code = "relay_failed"


class ConsoleBroke(RelayError):
    """The technician's page broke the stream's protocol (bad control or RFB message)."""

    code = "protocol_error"


class ConsoleFrameTooLarge(RelayError):
    """The technician's page sent a frame or message over the relay's limit."""

    code = "too_large"


class ConsoleFrameUnsupported(RelayError):
    """The technician's page sent a frame of a type this stream does not carry."""

    code = "unsupported"
