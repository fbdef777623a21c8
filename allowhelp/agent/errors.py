"""The agent's exception tree; each message is one line the PC's user can act on."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration folder is missing or damaged."""


class EnrolError(AgentError):
    """Enrolment failed; the message says why and what to do."""


class TunnelRefused(AgentError):
    """The broker at the other end is not the one pinned at enrolment."""


class ProxyError(AgentError, OSError):
    """A web proxy refused, failed or stalled; the message names the proxy, never
    its password. An ``OSError`` too: to the tunnel it is a network failure."""
