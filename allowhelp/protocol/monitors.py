"""The monitors of a PC's graphical session, as the agent reports them and a request picks one.

The agent lists its session's monitors in its ``Hello`` (``monitors``) and a
session helper in its ``HelperHello``, as one line of text (the control
channel's fields are flat)::

    HDMI-1 1920x1080+0+0 primary;DP-1 2560x1440+1920+0

A screen request names one monitor (``ConsentRequest.monitor``), ``all`` for
every monitor at once, or "" for the engine's default. Sans-I/O; the agent
finds the monitors (``agent/monitors.py``), the broker checks a request
against the ones reported (``broker/sessions/screenchoice.py``).

Everything here reads hostile text: a line that does not follow the form is a
``ValueError`` saying why, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ALL = "all"  # every monitor at once
MAX_MONITORS = 16
MAX_LINE = 2000  # the Hello's ``monitors`` field
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ENTRY = re.compile(
    r"(?P<name>[^ ;]+) (?P<w>[0-9]{1,5})x(?P<h>[0-9]{1,5})"
    r"\+(?P<x>-?[0-9]{1,6})\+(?P<y>-?[0-9]{1,6})(?P<primary> primary)?"
)


@dataclass(frozen=True)
class Monitor:
    """One monitor: its name (xrandr's, sway's output name), size and place on the desktop."""

    name: str
    width: int
    height: int
    x: int = 0
    y: int = 0
    primary: bool = False

    @classmethod
    def from_match(cls, match: re.Match[str]) -> Monitor:
        """From a pattern with the groups name, w, h, x, y and primary (optional)."""
        return cls(
            match["name"],
            int(match["w"]),
            int(match["h"]),
            int(match["x"]),
            int(match["y"]),
            bool(match["primary"]),
        )

    @property
    def geometry(self) -> str:
        """``WxH+X+Y`` (x11vnc's ``-clip`` takes it as is)."""
        return f"{self.width}x{self.height}+{self.x}+{self.y}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "x": self.x,
            "y": self.y,
            "primary": self.primary,
        }


def is_monitor_name(value: object) -> bool:
    """A name the agent may report and a request may carry (not ``all``)."""
    return isinstance(value, str) and value != ALL and NAME.fullmatch(value) is not None


def encode(monitors: Iterable[Monitor]) -> str:
    """The ``monitors`` line; monitors with names outside ``NAME`` are left out."""
    parts = [
        f"{m.name} {m.geometry}" + (" primary" if m.primary else "")
        for m in monitors
        if is_monitor_name(m.name) and 0 < m.width < 100000 and 0 < m.height < 100000
    ]
    return ";".join(parts[:MAX_MONITORS])


def decode(line: str) -> tuple[Monitor, ...]:
    """The monitors of a ``monitors`` line ("" → none); ValueError when it is malformed."""
    if not line:
        return ()
    if len(line) > MAX_LINE:
        raise ValueError(f"the monitors line is longer than {MAX_LINE} characters")
    entries = line.split(";")
    if len(entries) > MAX_MONITORS:
        raise ValueError(f"more than {MAX_MONITORS} monitors")
    found: list[Monitor] = []
    for entry in entries:
        match = _ENTRY.fullmatch(entry)
        if match is None or not is_monitor_name(match["name"]):
            raise ValueError(f"a malformed monitor: {entry[:80]!r}")
        monitor = Monitor.from_match(match)
        if not monitor.width or not monitor.height:
            raise ValueError(f"a monitor of no size: {monitor.name}")
        if any(other.name == monitor.name for other in found):
            raise ValueError(f"monitor {monitor.name} is listed twice")
        found.append(monitor)
    return tuple(found)


def primary(monitors: Iterable[Monitor]) -> Monitor | None:
    """The primary monitor, else the first; None without monitors."""
    listed = list(monitors)
    return next((m for m in listed if m.primary), listed[0] if listed else None)


def find(monitors: Iterable[Monitor], name: str) -> Monitor | None:
    return next((m for m in monitors if m.name == name), None)


# What each engine cannot show at all (docs/wayland.md, "Several monitors").
PORTAL_PICKS = (
    "on this desktop the person at the PC picks the monitor in the desktop's own"
    " screen-sharing dialog: ask for the screen without choosing one, or for all monitors"
)
NOT_REPORTED = "this PC did not report its monitors: ask for the screen without choosing one"
ONE_AT_A_TIME = "this screen engine shows one monitor at a time: pick one monitor"
ALL_ENGINES = ("x11", "wlroots", "portal")  # engines that show every monitor at once


def refusal(engine: str, monitors: Iterable[Monitor], choice: str) -> str:
    """Why the session's ``engine`` cannot show ``choice`` ("" when it can).

    The same rule at the broker (against what the agent reported) and in the
    agent (against what the session has now): deny by default. "" is the
    engine's default (the whole screen on X11, wayvnc's first output, the
    desktop's dialog) and always allowed. ``all`` needs the monitors reported
    (the console offers it only with more than one); on the portal engine it
    means the desktop's dialog lets the person pick several."""
    listed = list(monitors)
    if not choice:
        problem = ""
    elif engine == "portal" and choice != ALL:
        problem = PORTAL_PICKS
    elif not listed:
        problem = NOT_REPORTED
    elif choice == ALL:
        problem = "" if engine in ALL_ENGINES else ONE_AT_A_TIME
    elif find(listed, choice) is None:
        names = ", ".join(m.name for m in listed)
        problem = f"this PC has no monitor {choice!r} (it has {names})"
    else:
        problem = ""
    return problem
