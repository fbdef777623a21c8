"""Test-only: find windows and answer KDE's screen-sharing dialog in a headless KWin.

Run as the session's user, in its D-Bus session, with the system Python (PyGObject).

- ``geometry CLASS``: prints ``x y width height`` of the first window of that
  resource class, through a KWin script (``org.kde.kwin.Scripting``; the script
  prints into KWin's log, ``$XDG_RUNTIME_DIR/kwin.log``); exit 1 if there is none.
- ``cursor``: prints KWin's pointer position, ``x y`` (the same way).
- ``share``: picks the monitor in xdg-desktop-portal-kde's screen chooser (a
  click on the dialog's second card: Plasma 5.27's list shows a "new virtual
  output" card first, then the monitor) and presses Return (Share).
- ``decline``: presses Escape (the dialog's Cancel).

The keys and the pointer go through KDE's own RemoteDesktop portal: Plasma 5.27
asks nothing of an application that is not sandboxed (it only shows a "Remote
control session started" notification), so a test can drive its own dialog
that way. A product must never do this: the dialog is the user's consent.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib  # type: ignore[import-not-found,unused-ignore]

DESKTOP, DESKTOP_PATH = "org.freedesktop.portal.Desktop", "/org/freedesktop/portal/desktop"
REMOTE = "org.freedesktop.portal.RemoteDesktop"
DIALOG_CLASS = "org.freedesktop.impl.portal.desktop.kde"
RETURN, ESCAPE, BTN_LEFT = 0xFF0D, 0xFF1B, 0x110
SCRIPT = """var ws = workspace.clientList();
for (var i = 0; i < ws.length; i++) {
  if (ws[i].resourceClass == "%s") {
    var g = ws[i].frameGeometry;
    print("%s", g.x, g.y, g.width, g.height);
    break;
  }
}
"""
CURSOR = """print("%s", workspace.cursorPos.x, workspace.cursorPos.y);
"""
PAUSE = 0.3


class Session:
    def __init__(self) -> None:
        self.bus: Any = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        self._sender = str(self.bus.get_unique_name())[1:].replace(".", "_")
        self._count = 0
        self.handle = ""

    def request(self, method: str, signature: str, args: list[Any]) -> dict[str, Any]:
        self._count += 1
        token = f"kdetest{self._count}"
        path = f"{DESKTOP_PATH}/request/{self._sender}/{token}"
        args[-1]["handle_token"] = GLib.Variant("s", token)
        loop = GLib.MainLoop()
        answer: list[Any] = []

        def respond(*params: Any) -> None:
            answer.append(params[-1].unpack())
            loop.quit()

        sub = self.bus.signal_subscribe(
            DESKTOP, "org.freedesktop.portal.Request", "Response", path, None, 0, respond
        )
        self.bus.call_sync(
            DESKTOP,
            DESKTOP_PATH,
            REMOTE,
            method,
            GLib.Variant(signature, tuple(args)),
            None,
            0,
            10000,
            None,
        )
        GLib.timeout_add(10000, loop.quit)
        loop.run()
        self.bus.signal_unsubscribe(sub)
        if not answer or answer[0][0] != 0:
            raise SystemExit(f"the RemoteDesktop portal refused {method}: {answer}")
        return dict(answer[0][1])

    def start(self) -> None:
        token = GLib.Variant("s", "kdetestsession")
        self.handle = str(
            self.request("CreateSession", "(a{sv})", [{"session_handle_token": token}])[
                "session_handle"
            ]
        )
        self.request("SelectDevices", "(oa{sv})", [self.handle, {"types": GLib.Variant("u", 3)}])
        self.request("Start", "(osa{sv})", [self.handle, "", {}])

    def notify(self, method: str, signature: str, *args: Any) -> None:
        self.bus.call_sync(
            DESKTOP,
            DESKTOP_PATH,
            REMOTE,
            method,
            GLib.Variant(signature, (self.handle, {}, *args)),
            None,
            0,
            10000,
            None,
        )

    def key(self, keysym: int) -> None:
        for down in (1, 0):
            self.notify("NotifyKeyboardKeysym", "(oa{sv}iu)", keysym, down)
        time.sleep(PAUSE)

    def click(self, x: float, y: float) -> None:
        # relative motion only (absolute needs a stream): to the corner, then to (x, y)
        self.notify("NotifyPointerMotion", "(oa{sv}dd)", -10000.0, -10000.0)
        self.notify("NotifyPointerMotion", "(oa{sv}dd)", x, y)
        time.sleep(PAUSE)
        for down in (1, 0):
            self.notify("NotifyPointerButton", "(oa{sv}iu)", BTN_LEFT, down)
        time.sleep(PAUSE)

    def close(self) -> None:
        if self.handle:
            self.bus.call_sync(
                DESKTOP,
                self.handle,
                "org.freedesktop.portal.Session",
                "Close",
                None,
                None,
                0,
                10000,
                None,
            )


def geometry(bus: Any, resource_class: str) -> tuple[int, ...] | None:
    return kwin_says(bus, lambda mark: SCRIPT % (resource_class, mark))


def kwin_says(bus: Any, source: Any) -> tuple[int, ...] | None:
    """Run a KWin script that prints one line of numbers after a mark; those numbers."""
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    mark = f"allowhelp-{uuid.uuid4().hex}"
    script = runtime / f"{mark}.js"
    script.write_text(source(mark))
    try:
        reply = bus.call_sync(
            "org.kde.KWin",
            "/Scripting",
            "org.kde.kwin.Scripting",
            "loadScript",
            GLib.Variant("(ss)", (str(script), mark)),
            None,
            0,
            10000,
            None,
        )
        number = reply.unpack()[0]
        bus.call_sync(
            "org.kde.KWin",
            f"/{number}",
            "org.kde.kwin.Script",
            "run",
            None,
            None,
            0,
            10000,
            None,
        )
        for _ in range(30):
            for line in (runtime / "kwin.log").read_text(errors="replace").splitlines():
                if mark in line:
                    return tuple(int(float(v)) for v in line.split(mark)[1].split())
            time.sleep(0.1)
        return None
    finally:
        bus.call_sync(
            "org.kde.KWin",
            "/Scripting",
            "org.kde.kwin.Scripting",
            "unloadScript",
            GLib.Variant("(s)", (mark,)),
            None,
            0,
            10000,
            None,
        )
        script.unlink()


def main() -> int:
    what = sys.argv[1]
    session = Session()
    if what == "geometry":
        found = geometry(session.bus, sys.argv[2])
        if found is None:
            return 1
        print(*found)
        return 0
    if what == "cursor":
        position = kwin_says(session.bus, lambda mark: CURSOR % mark)
        if position is None:
            return 1
        print(*position)
        return 0
    dialog = geometry(session.bus, DIALOG_CLASS)
    if dialog is None:
        return 1  # not shown yet: the caller asks again
    session.start()
    try:
        if what == "share":
            x, y, width = dialog[:3]
            session.click(x + width * 3 // 4, y + 200)
            session.key(RETURN)
        else:
            session.key(ESCAPE)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
