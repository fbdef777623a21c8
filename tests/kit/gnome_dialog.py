"""Test-only: answer GNOME's screen-sharing dialog in a headless GNOME session.

Run as the session's user, in its D-Bus session. It presses keys through
mutter's own RemoteDesktop D-Bus API (org.gnome.Mutter.RemoteDesktop), which a
headless test can reach and a product must never use: the dialog is the user's
consent. ``share``: Down, space, Tab, Tab, space picks the first monitor and
presses Share (GNOME 43's screen-cast dialog); ``decline``: Down, Tab, space
presses Cancel; ``control`` (the remote-desktop dialog): the monitor, then the
"Allow Remote Interaction" switch, then Alt+S (Share); ``share-only``: the same
without allowing interaction; ``share-all`` and ``control-all``: the same with
every monitor picked (a dialog that lets the user pick several: Down picks the
first, Shift+Down adds the next).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gi.repository import Gio, GLib  # type: ignore[import-not-found,unused-ignore]

MUTTER = "org.gnome.Mutter.RemoteDesktop"
DOWN, SPACE, TAB, ALT_S = (0xFF54,), (0x20,), (0xFF09,), (0xFFE9, 0x73)
SHIFT_DOWN = (0xFFE1, 0xFF54)
CTRL_DOWN = (0xFFE3, 0xFF54)
KEYS = {
    "share": (DOWN, SPACE, TAB, TAB, SPACE),
    "decline": (DOWN, TAB, SPACE),
    # the remote-desktop dialog: the monitor, "Allow Remote Interaction", Share (Alt+S)
    "control": (DOWN, SPACE, TAB, SPACE, ALT_S),
    "share-only": (DOWN, SPACE, ALT_S),  # the monitor, but no remote interaction
    # several monitors (the portal's "multiple"): the first, then Shift+Down adds the next
    "share-all": (DOWN, SHIFT_DOWN, TAB, TAB, SPACE),
    "control-all": (DOWN, SHIFT_DOWN, TAB, SPACE, ALT_S),
    # the first monitor only, in a dialog that lets the user pick several: Down picks
    # it, Ctrl+Down moves on without picking the next (Tab from the first row leads
    # elsewhere in that dialog)
    "share-first": (DOWN, CTRL_DOWN, TAB, TAB, SPACE),
}
PAUSE = 0.3
PORTAL = "org.freedesktop.portal.Desktop"
REQUESTS = "/org/freedesktop/portal/desktop/request"
DIALOG_WAIT = 20.0  # at most, for a portal request to be pending
SETTLE = 1.0  # after it is: the dialog is mapped and has the keyboard


def children(bus: Any, path: str) -> list[str]:
    """The child nodes of ``path`` on xdg-desktop-portal (D-Bus introspection)."""
    try:
        reply = bus.call_sync(
            PORTAL,
            path,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            None,
            None,
            0,
            5000,
            None,
        )
    except GLib.Error:
        return []
    xml = Gio.DBusNodeInfo.new_for_xml(reply.unpack()[0])
    return [f"{path}/{node.path}" for node in xml.nodes]


def wait_for_a_pending_request(bus: Any) -> None:
    """Until some application's portal request is pending (its Request object exists
    from the call until the answer: for Start, while the dialog is up), then a moment
    for the dialog to take the keyboard. Gives up quietly after DIALOG_WAIT: the keys
    are pressed anyway (keys without a dialog go to foot, which is harmless)."""
    deadline = time.monotonic() + DIALOG_WAIT
    while time.monotonic() < deadline:
        if any(children(bus, sender) for sender in children(bus, REQUESTS)):
            time.sleep(SETTLE)
            return
        time.sleep(0.1)


def main() -> int:
    bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
    wait_for_a_pending_request(bus)

    def call(path: str, iface: str, method: str, args: object = None) -> object:
        return bus.call_sync(MUTTER, path, iface, method, args, None, 0, 10000, None)

    reply = call("/org/gnome/Mutter/RemoteDesktop", MUTTER, "CreateSession")
    session = reply.unpack()[0]  # type: ignore[attr-defined]
    iface = MUTTER + ".Session"
    call(session, iface, "Start")
    try:
        for chord in KEYS[sys.argv[1]]:
            for keysym, down in [(k, True) for k in chord] + [(k, False) for k in chord[::-1]]:
                call(session, iface, "NotifyKeyboardKeysym", GLib.Variant("(ub)", (keysym, down)))
            time.sleep(PAUSE)
    finally:
        call(session, iface, "Stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
