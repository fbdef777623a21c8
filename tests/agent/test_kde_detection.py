"""KDE detection in the hello (#15): KWin's version read from its own D-Bus report.

The real thing (a headless KWin answering) is in test_kde_screen.py, opt-in; these
are the rule and the parsing, and the probe's behaviour when nothing answers.
"""

from __future__ import annotations

import time

from allowhelp.agent.desktop import Probe, choose_engine, kwin_version, parse_kwin_version

KDE = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland", "XDG_CURRENT_DESKTOP": "KDE"}
PORTALS = {"ScreenCast": 4, "RemoteDesktop": 1}
PROGRAMS = frozenset({"gst-launch-1.0"})
# the head of KWin 5.27's supportInformation, as `dbus-send --print-reply=literal` shows it
SUPPORT_INFORMATION = """   KWin Support Information:
The following information should be used when requesting support on e.g. https://forum.kde.org.

==========================

Version
=======
KWin version: 5.27.5
Qt Version: 5.15.8
Qt compile version: 5.15.8
"""


def test_kwins_version_is_read_from_its_support_information() -> None:
    assert parse_kwin_version(SUPPORT_INFORMATION) == "KWin 5.27.5"
    assert parse_kwin_version("KWin version: 6.0\n") == "KWin 6.0"


def test_anything_else_is_no_version() -> None:
    for text in (
        "",
        "Error org.freedesktop.DBus.Error.ServiceUnknown: The name org.kde.KWin was not provided",
        "KWin version: 5.27.5; and more",  # only a whole line counts
        "KWin version: five\n",
        "Qt Version: 5.15.8\n",
        "KWin version: " + "9" * 40 + "\n",
    ):
        assert parse_kwin_version(text) == "", text


def test_the_console_is_told_kde_with_kwins_version_and_the_portals() -> None:
    found = Probe(PROGRAMS, PORTALS, True, "KWin 5.27.5")
    offer = choose_engine(KDE, found)
    assert offer.engine == "portal"
    assert offer.desktop == "wayland: kde (KWin 5.27.5); portals RemoteDesktop 1, ScreenCast 4"
    # not known (KWin did not answer): said as before
    unknown = choose_engine(KDE, Probe(PROGRAMS, PORTALS, True))
    assert unknown.desktop == "wayland: kde; portals RemoteDesktop 1, ScreenCast 4"


def test_no_kwin_on_the_bus_is_no_version_and_no_wait() -> None:
    began = time.monotonic()
    env = {**KDE, "PATH": "/usr/bin:/bin", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}
    assert kwin_version(env) == ""
    assert time.monotonic() - began < 4  # PROBE_TIMEOUT bounds it
