"""Why the PC cannot be asked at all, said at once rather than after the consent
timeout: (end reason, error code, message). From the agent's Hello on the tunnel
the request goes over: an admin shell of a per-user agent, nobody signed in, a
screen it cannot share (``screenchoice.py``), view-only files it would not run
read-only.
"""

from __future__ import annotations

from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.screenchoice import Refusal, screen_refusal
from allowhelp.broker.tunnel.agents import LiveAgent


def cannot_ask(session: Session, live: LiveAgent) -> Refusal | None:
    return (
        _nobody_to_ask(session, live.system, live.nobody_signed_in)
        or screen_refusal(session, live)
        or _files(session, live.files_view_only)
    )


def _files(session: Session, can: bool) -> Refusal | None:
    """An agent older than view-only files would offer the PC user a read-write one."""
    if session.kind == "files" and session.view_only and not can:
        return (
            "unsupported",
            "files_view_only_unsupported",
            "this PC's agent is older than view-only files: ask for files, or update it",
        )
    return None


def _nobody_to_ask(session: Session, system: bool, nobody_signed_in: bool) -> Refusal | None:
    """Why the PC cannot be asked at all: (end reason, error code, message)."""
    if session.kind == "admin-shell" and not system:
        return (
            "unsupported",
            "admin_shell_unsupported",
            "this PC's agent runs per user: an administrator shell needs the machine "
            "service (allowhelp-agent run --system)",
        )
    if nobody_signed_in:
        return (
            "nobody_signed_in",
            "nobody_signed_in",
            "nobody is signed in at this PC: there is nobody to allow it",
        )
    return None
