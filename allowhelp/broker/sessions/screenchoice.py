"""What a screen request may ask of a PC, checked against what its agent reported.

Two checks, both before the PC is asked anything:

- ``clean_monitor``: the request's ``monitor`` field is well formed (a
  monitor's name, ``all``, or absent), and only on a screen request; else 400.
- ``screen_refusal``: the PC said in its Hello that it cannot share its screen
  (``screen: none`` and why), or cannot show the monitor asked for (one it did
  not report, a name where the desktop's dialog picks (GNOME), ``all`` where
  it reported no monitors, ``protocol/monitors.refusal``). The registry then
  ends the session at once, as it does for a PC where nobody is signed in: ``session.requested`` and
  ``session.ended`` (reason ``unsupported``, the agent's words in ``error``) are
  audited and the technician gets 409 with the reason. The console disables
  the button too, but a forged API request meets this check.

An agent that did not say (older, ``screen`` "") is asked as before; it can
be asked for no monitor, since it reported none. The agent checks again
against what its session has when it starts the screen (``agent/screen.py``).
"""

from __future__ import annotations

from allowhelp.broker.errors import BadRequest
from allowhelp.broker.model.session import Session
from allowhelp.broker.tunnel.agents import LiveAgent
from allowhelp.protocol.kinds import EndReason
from allowhelp.protocol.monitors import ALL, is_monitor_name, refusal

TOO_OLD_FOR_ALL = (
    "this PC's agent is too old to show all monitors at once: upgrade allowhelp-agent, "
    "or pick one monitor"
)

Refusal = tuple[EndReason, str, str]  # (end reason, error code, message)


def clean_monitor(kind: str, value: object) -> str:
    """The request's ``monitor``: "" (the default), ``all`` or a monitor's name."""
    if value is None or value == "":
        return ""
    if kind != "screen":
        raise BadRequest("monitor is only for a screen request", code="bad_monitor")
    if not isinstance(value, str) or not (value == ALL or is_monitor_name(value)):
        raise BadRequest(
            'monitor must be a monitor\'s name (as GET /api/v1/agents lists it) or "all"',
            code="bad_monitor",
        )
    return value


def screen_refusal(session: Session, live: LiveAgent) -> Refusal | None:
    """Why this PC cannot serve this screen request, as its agent reported; None if it can."""
    if session.kind != "screen":
        return None
    if live.screen == "none":
        why = live.screen_problem or "its agent did not say why"
        return ("unsupported", "screen_unavailable", f"this PC cannot share its screen: {why}")
    if session.monitor == ALL and live.screen and not live.all_monitors:
        return ("unsupported", "monitor_unavailable", TOO_OLD_FOR_ALL)
    problem = refusal(live.screen, live.monitors, session.monitor)
    if problem:
        return ("unsupported", "monitor_unavailable", problem)
    return None
