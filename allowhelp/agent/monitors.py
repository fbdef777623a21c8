"""The monitors of the signed-in session, asked of the desktop itself.

- X11: ``xrandr --listmonitors`` (RandR 1.5 monitors: the outputs, and any a
  ``xrandr --setmonitor`` made, e.g. one wide screen cut in two);
- sway: ``swaymsg -t get_outputs -r`` (the active outputs, wayvnc's ``--output``
  names);
- GNOME and KDE (the portal engine): none here. The person at the PC picks the
  monitor in the desktop's own sharing dialog; the agent reports none, and a
  request that names one is refused (``protocol/monitors.refusal``).

Each question is bounded by ``TIMEOUT``; a desktop that does not answer, or
answers something unexpected, has no monitors reported (then only the engine's
default can be asked for: deny by default). The parsers are sans-I/O.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping

from allowhelp.protocol.monitors import MAX_MONITORS, Monitor, is_monitor_name

TIMEOUT = 3.0
# " 0: +*HDMI-1 1920/527x1080/296+0+0  HDMI-1"  (+ automatic, * primary)
_XRANDR_LINE = re.compile(
    r"\s*\d+: (?P<auto>\+)?(?P<primary>\*)?(?P<name>\S+) (?P<w>\d+)/\d+x(?P<h>\d+)/\d+"
    r"(?P<x>[+-]\d+)(?P<y>[+-]\d+)(?:\s.*)?"
)


def parse_xrandr(text: str) -> tuple[Monitor, ...]:
    """``xrandr --listmonitors`` output → monitors (unreadable lines are left out)."""
    found: list[Monitor] = []
    for line in text.splitlines()[1:]:
        match = _XRANDR_LINE.fullmatch(line)
        if match is None or not is_monitor_name(match["name"]):
            continue
        found.append(Monitor.from_match(match))
    return tuple(found[:MAX_MONITORS])


def parse_sway_outputs(text: str) -> tuple[Monitor, ...]:
    """``swaymsg -t get_outputs -r`` (JSON) → the active outputs."""
    try:
        outputs = json.loads(text)
    except ValueError:
        return ()
    found: list[Monitor] = []
    for output in outputs if isinstance(outputs, list) else []:
        if not isinstance(output, dict) or not output.get("active", True):
            continue
        rect = output.get("rect")
        name = output.get("name")
        if not isinstance(rect, dict) or not is_monitor_name(name):
            continue
        values = [rect.get(key) for key in ("width", "height", "x", "y")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        width, height, x, y = (int(v) for v in values)  # type: ignore[arg-type]
        if width > 0 and height > 0:
            found.append(Monitor(str(name), width, height, x, y, bool(output.get("primary"))))
    return tuple(found[:MAX_MONITORS])


def _ask(env: Mapping[str, str], argv: list[str]) -> str:
    program = shutil.which(argv[0], path=env.get("PATH") or os.defpath)
    if program is None:
        return ""
    try:
        done = subprocess.run(
            [program, *argv[1:]],
            env=dict(env),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else ""


def session_monitors(env: Mapping[str, str], engine: str) -> tuple[Monitor, ...]:
    """The monitors the ``engine`` can be pointed at in this session, asked now."""
    if engine == "x11" and env.get("DISPLAY"):
        return parse_xrandr(_ask(env, ["xrandr", "--listmonitors"]))
    if engine == "wlroots" and env.get("SWAYSOCK"):
        return parse_sway_outputs(_ask(env, ["swaymsg", "-t", "get_outputs", "-r"]))
    return ()
