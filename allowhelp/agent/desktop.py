"""What the signed-in session can offer for screen sharing, and which engine would serve it.

Two halves, so the rule can be tested without a desktop:

- ``choose_engine(env, probe)`` is the rule, sans-I/O: from the session's
  environment (``XDG_SESSION_TYPE``, ``WAYLAND_DISPLAY``, ``DISPLAY``,
  ``XDG_CURRENT_DESKTOP``, ``SWAYSOCK``, ...) and what was found on the PC (which
  screen servers are installed, which portal interfaces answer and at which
  version) it says ``x11``, ``wlroots``, ``portal`` or ``none`` with the reason.
- ``probe(env)`` finds those facts: ``shutil.which`` for the programs and, only
  for a Wayland desktop that is not wlroots, one ``dbus-send`` per portal
  interface (bounded by ``PROBE_TIMEOUT``) on the session's own bus; on KDE
  one more, KWin's own ``supportInformation``, for its version.

Engines (docs/wayland.md says why each):
    x11      x11vnc on a socketpair (screen.py)
    wlroots  wayvnc on a unix socket in a folder private to the user (wayvnc.py)
    portal   GNOME, KDE: the ScreenCast portal's PipeWire stream through GStreamer,
             served as RFB by ``portalvnc``; input through the RemoteDesktop portal.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from allowhelp.agent.monitors import session_monitors
from allowhelp.protocol.monitors import encode as encode_monitors

Engine = Literal["x11", "wlroots", "portal", "none"]
ENGINES: tuple[Engine, ...] = ("x11", "wlroots", "portal", "none")

# XDG_CURRENT_DESKTOP names of compositors with wlr-screencopy and virtual input,
# which is what wayvnc needs.
WLROOTS_DESKTOPS = frozenset({"sway", "hyprland", "labwc", "river", "wayfire", "wlroots"})
# Environment variables that only a given wlroots compositor sets.
WLROOTS_MARKERS = {"SWAYSOCK": "sway", "HYPRLAND_INSTANCE_SIGNATURE": "hyprland"}
PROGRAMS = ("x11vnc", "wayvnc", "gst-launch-1.0")
PORTAL_INTERFACES = ("ScreenCast", "RemoteDesktop")
PROBE_TIMEOUT = 3.0
KWIN_VERSION = re.compile(r"^KWin version: (\d{1,3}(?:\.\d{1,4}){0,3})\s*$", re.MULTILINE)
TEST_COMMAND_ENV = "ALLOWHELP_TEST_SCREEN_COMMAND"  # screen.py's test knob


@dataclass(frozen=True)
class Probe:
    """What was found on the PC: installed programs, portal interfaces → version."""

    programs: frozenset[str] = frozenset()
    portals: Mapping[str, int] = field(default_factory=dict)
    gi: bool = False  # PyGObject for this Python: the portal engine talks D-Bus with it
    compositor_version: str = ""  # e.g. "KWin 5.27.5" (KDE); "" when not asked or not known


@dataclass(frozen=True)
class ScreenOffer:
    """The engine for this session, or ``none`` and why not, and what was seen."""

    engine: Engine
    problem: str = ""
    desktop: str = ""
    monitors: str = ""  # the session's monitors (protocol/monitors.py's line; agent/monitors.py)

    @property
    def available(self) -> bool:
        return self.engine != "none"


def session_type(env: Mapping[str, str]) -> str:
    """``wayland``, ``x11`` or "" (no graphical session), as the session says it."""
    said = env.get("XDG_SESSION_TYPE", "").lower()
    if said in ("wayland", "x11"):
        return said
    if env.get("WAYLAND_DISPLAY"):
        return "wayland"
    return "x11" if env.get("DISPLAY") else ""


def compositor(env: Mapping[str, str]) -> str:
    """The desktop's name, lower case (``sway``, ``gnome``, ``kde``), or ""."""
    for marker, name in WLROOTS_MARKERS.items():
        if env.get(marker):
            return name
    for variable in ("XDG_CURRENT_DESKTOP", "XDG_SESSION_DESKTOP", "DESKTOP_SESSION"):
        names = [part.strip().lower() for part in env.get(variable, "").split(":") if part.strip()]
        for name in names:
            if name in WLROOTS_DESKTOPS:
                return name
        if names:
            return names[-1] if names[0] == "ubuntu" else names[0]
    return ""


def describe(env: Mapping[str, str], probe: Probe) -> str:
    """What the console shows: ``wayland: sway``, ``wayland: gnome; ScreenCast 4, ...``."""
    kind = session_type(env) or "no graphical session"
    name = compositor(env)
    text = f"{kind}: {name}" if name and kind != "no graphical session" else kind
    if probe.compositor_version and name:
        text += f" ({probe.compositor_version})"
    portals = ", ".join(f"{iface} {probe.portals[iface]}" for iface in sorted(probe.portals))
    return f"{text}; portals {portals}" if portals else text


def choose_engine(env: Mapping[str, str], probe: Probe) -> ScreenOffer:
    """The rule: which engine serves this session, or why none can."""
    desktop = describe(env, probe)
    if env.get(TEST_COMMAND_ENV, "").strip():
        return ScreenOffer("x11", "", "test program")
    kind = session_type(env)
    if kind == "":
        engine, problem = (
            _NONE,
            (
                "no X display: the agent was started without DISPLAY or WAYLAND_DISPLAY"
                " (no graphical session)"
            ),
        )
    elif kind == "x11":
        engine, problem = _x11(env, probe)
    else:
        engine, problem = _wayland(env, probe)
    return ScreenOffer(engine, problem, desktop)


_NONE: Engine = "none"


def _x11(env: Mapping[str, str], probe: Probe) -> tuple[Engine, str]:
    if not env.get("DISPLAY"):
        return _NONE, "an X11 session without DISPLAY"
    if "x11vnc" not in probe.programs:
        return _NONE, _missing("x11vnc")
    return "x11", ""


def _wayland(env: Mapping[str, str], probe: Probe) -> tuple[Engine, str]:
    if not env.get("WAYLAND_DISPLAY"):
        return _NONE, "a Wayland session without WAYLAND_DISPLAY"
    name = compositor(env)
    if name in WLROOTS_DESKTOPS:
        return ("wlroots", "") if "wayvnc" in probe.programs else (_NONE, _missing("wayvnc"))
    if "ScreenCast" not in probe.portals:
        return _NONE, "Wayland session without a screen-cast portal"
    if "gst-launch-1.0" not in probe.programs:
        return _NONE, (
            "GStreamer is not installed on this PC"
            " (Debian: apt install gstreamer1.0-tools gstreamer1.0-pipewire)"
        )
    if not probe.gi:
        return _NONE, (
            "PyGObject is not available to the agent's Python (Debian: apt install"
            " python3-gi; a virtual environment needs --system-site-packages)"
        )
    return "portal", ""


def _missing(program: str) -> str:
    return f"{program} is not installed on this PC (Debian: apt install {program})"


# --- the probe (I/O) ---------------------------------------------------------


def installed_programs(env: Mapping[str, str]) -> frozenset[str]:
    path = env.get("PATH") or os.defpath
    return frozenset(name for name in PROGRAMS if shutil.which(name, path=path))


def portal_version(env: Mapping[str, str], interface: str) -> int | None:
    """The version of ``org.freedesktop.portal.<interface>`` on the session bus, or None."""
    reply = _session_call(
        env,
        "org.freedesktop.portal.Desktop",
        "/org/freedesktop/portal/desktop",
        "org.freedesktop.DBus.Properties.Get",
        f"string:org.freedesktop.portal.{interface}",
        "string:version",
    )
    return None if reply is None else parse_version_reply(reply)


def kwin_version(env: Mapping[str, str]) -> str:
    """``KWin 5.27.5`` from KWin's own D-Bus report on the session bus, or ""."""
    reply = _session_call(env, "org.kde.KWin", "/KWin", "org.kde.KWin.supportInformation")
    return "" if reply is None else parse_kwin_version(reply)


def parse_kwin_version(text: str) -> str:
    """KWin's ``supportInformation`` (``KWin version: 5.27.5`` on a line) → ``KWin 5.27.5``."""
    found = KWIN_VERSION.search(text)
    return f"KWin {found.group(1)}" if found else ""


def _session_call(
    env: Mapping[str, str], dest: str, path: str, method: str, *args: str
) -> str | None:
    """One ``dbus-send`` on the session's bus (``PROBE_TIMEOUT``): its literal reply, or None."""
    dbus_send = shutil.which("dbus-send", path=env.get("PATH") or os.defpath)
    if dbus_send is None:
        return None
    argv = [
        dbus_send,
        "--session",
        "--print-reply=literal",
        f"--reply-timeout={int(PROBE_TIMEOUT * 1000)}",
        f"--dest={dest}",
        path,
        method,
        *args,
    ]
    try:
        done = subprocess.run(
            argv, env=dict(env), capture_output=True, timeout=PROBE_TIMEOUT + 1, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:
        return None
    return done.stdout.decode("utf-8", "replace")


def parse_version_reply(text: str) -> int | None:
    """``   variant       uint32 4`` → 4; anything else → None."""
    words = text.split()
    if len(words) >= 2 and words[-2] == "uint32" and words[-1].isdigit():
        return int(words[-1])
    return None


def probe(env: Mapping[str, str]) -> Probe:
    programs = installed_programs(env)
    portals: dict[str, int] = {}
    wants_portal = (
        session_type(env) == "wayland"
        and bool(env.get("WAYLAND_DISPLAY"))
        and compositor(env) not in WLROOTS_DESKTOPS
        and not env.get(TEST_COMMAND_ENV, "").strip()
    )
    if wants_portal:
        for interface in PORTAL_INTERFACES:
            version = portal_version(env, interface)
            if version is not None:
                portals[interface] = version
    kwin = kwin_version(env) if wants_portal and compositor(env) == "kde" else ""
    return Probe(programs, portals, importlib.util.find_spec("gi") is not None, kwin)


@functools.cache
def this_session() -> ScreenOffer:
    """The offer of the session this process runs in, with its monitors (probed once)."""
    env = dict(os.environ)
    offer = choose_engine(env, probe(env))
    if not offer.available:
        return offer
    found = session_monitors(env, offer.engine)
    return dataclasses.replace(offer, monitors=encode_monitors(found))
