"""The monitors of the signed-in session, asked of the desktop itself.

- X11: ``xrandr --listmonitors`` (RandR 1.5 monitors: the outputs, and any a
  ``xrandr --setmonitor`` made, e.g. one wide screen cut in two);
- sway: ``swaymsg -t get_outputs -r`` (the active outputs, wayvnc's ``--output``
  names);
- GNOME (the portal engine): mutter's ``org.gnome.Mutter.DisplayConfig``
  ``GetCurrentState`` (``busctl --user --json=short``): the logical monitors, by
  connector name, in the desktop's layout. The person at the PC still picks the
  monitor in the desktop's own sharing dialog, so a request that names one is
  refused (``protocol/monitors.refusal``); the list tells the console that there
  is more than one, so it offers "all monitors" (the dialog then lets the person
  pick several). KDE: none (no such interface asked here).

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


def _current_mode(physical: object) -> tuple[int, int] | None:
    """A mutter monitor ``((connector, ...), modes, props)``: its current mode's size."""
    if not isinstance(physical, list) or len(physical) < 2 or not isinstance(physical[1], list):
        return None
    for mode in physical[1]:
        if not isinstance(mode, list) or len(mode) < 7 or not isinstance(mode[6], dict):
            continue
        current = mode[6].get("is-current")
        if isinstance(current, dict) and current.get("data") is True:
            width, height = mode[1], mode[2]
            if isinstance(width, int) and isinstance(height, int):
                return width, height
    return None


def parse_mutter_state(text: str) -> tuple[Monitor, ...]:
    """``busctl --json=short`` of mutter's ``GetCurrentState`` → the logical monitors.

    Each is named by its (first) connector, sized by that monitor's current mode
    (divided by its scale in mutter's logical layout mode, turned by a 90/270
    degree transform) and placed where the desktop puts it."""
    try:
        reply = json.loads(text)
        serial, physical, logical, properties = reply["data"]
    except (ValueError, KeyError, TypeError):
        return ()
    del serial
    modes: dict[str, tuple[int, int]] = {}
    for monitor in physical if isinstance(physical, list) else []:
        size = _current_mode(monitor)
        if size is not None and isinstance(monitor[0], list) and monitor[0]:
            modes[str(monitor[0][0])] = size
    layout = properties.get("layout-mode", {}) if isinstance(properties, dict) else {}
    scaled = isinstance(layout, dict) and layout.get("data") == 1  # 1: logical, 2: physical
    found: list[Monitor] = []
    for entry in logical if isinstance(logical, list) else []:
        try:
            x, y, scale, transform, is_primary, members = entry[:6]
            name = str(members[0][0])
            width, height = modes[name]
        except (ValueError, TypeError, IndexError, KeyError):
            continue
        if not (isinstance(x, int) and isinstance(y, int) and is_monitor_name(name)):
            continue
        if scaled and isinstance(scale, (int, float)) and scale > 0:
            width, height = round(width / scale), round(height / scale)
        if transform in (1, 3, 5, 7):
            width, height = height, width
        if width > 0 and height > 0:
            found.append(Monitor(name, width, height, x, y, is_primary is True))
    return tuple(found[:MAX_MONITORS])


MUTTER_STATE = [
    "busctl",
    "--user",
    "--json=short",
    "call",
    "org.gnome.Mutter.DisplayConfig",
    "/org/gnome/Mutter/DisplayConfig",
    "org.gnome.Mutter.DisplayConfig",
    "GetCurrentState",
]


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
    if engine == "portal":
        return parse_mutter_state(_ask(env, MUTTER_STATE))
    return ()
