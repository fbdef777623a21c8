"""The portal engine (GNOME, KDE on Wayland): the ScreenCast portal's PipeWire stream as RFB.

    python3 -m allowhelp.agent.portalvnc      (stdin and stdout: one end of a socketpair)

Run by the session helper as the user, exactly like ``x11vnc -inetd``: RFB on its
stdin/stdout, no listening socket of any kind. What it does:

1. asks xdg-desktop-portal for a ScreenCast session of one monitor
   (``portal.py``); the desktop shows its own dialog: the second consent the user
   sees after "Allow help". No restore token is asked for (``persist_mode`` 0).
2. reads the stream through GStreamer (``gst-launch-1.0 pipewiresrc fd=N path=NODE
   ! videoconvert ! BGRx ! fdsink``): raw frames of the monitor's size on a pipe.
3. serves RFB 3.8 (``rfbserver.py``): security None (the SSH tunnel and the
   consent gate are the security), Raw rectangles of the rows that changed.

``--control`` (a control grant): the session is a RemoteDesktop session with the
screen as its source, and the viewer's keys and pointer go to the desktop through
that portal (``NotifyKeyboardKeysym``, ``NotifyPointerMotionAbsolute``,
``NotifyPointerButton``, ``NotifyPointerAxisDiscrete``); the dialog then also
asks the user to allow remote interaction, and a session without keyboard and
pointer granted ends with that reason. Without it (view-only) the RemoteDesktop
portal is never asked for and input from the viewer is read and dropped (the
agent's own filter has dropped it already).

Exit status 0 when the viewer leaves or on SIGTERM (the portal session is
closed, GStreamer ended); otherwise 1 with one line on stderr saying why
("the user declined the desktop's screen-sharing dialog").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from allowhelp.agent.rfbserver import RfbServer, StreamEnded

STREAM_FORMAT = "BGRx"


def gstreamer_argv(fd: int, node: int, width: int, height: int) -> list[str]:
    caps = f"video/x-raw,format={STREAM_FORMAT},width={width},height={height}"
    return [
        "gst-launch-1.0",
        "-q",
        "pipewiresrc",
        f"fd={fd}",
        f"path={node}",
        "always-copy=true",
        "!",
        "videoconvert",
        "!",
        "videoscale",
        "!",
        caps,
        "!",
        "fdsink",
        "fd=1",
        "sync=false",
    ]


# RFB button mask bits → Linux input button codes (BTN_LEFT, BTN_MIDDLE, BTN_RIGHT)
BUTTONS = ((1, 0x110), (2, 0x112), (4, 0x111))
WHEEL = ((8, -1), (16, 1))  # wheel up, wheel down: one step each press


class PortalInput:
    """The viewer's keys and pointer, through the RemoteDesktop portal (control grants)."""

    def __init__(self, cast: Any, node: int) -> None:
        self._cast = cast
        self._node = node
        self._mask = 0

    def key(self, keysym: int, down: bool) -> None:
        self._cast.key(keysym, down)

    def pointer(self, mask: int, x: int, y: int) -> None:
        self._cast.move(self._node, x, y)
        for bit, button in BUTTONS:
            if (mask ^ self._mask) & bit:
                self._cast.button(button, bool(mask & bit))
        for bit, steps in WHEEL:
            if mask & bit and not self._mask & bit:
                self._cast.scroll(steps)
        self._mask = mask


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        from allowhelp.agent.portal import PortalError, ScreenCast  # noqa: PLC0415 - needs gi
    except ImportError:
        print(
            "the portal engine needs PyGObject for this Python"
            " (Debian: apt install python3-gi gir1.2-glib-2.0)",
            file=sys.stderr,
        )
        return 1
    viewer = socket.socket(fileno=os.dup(0))
    cast = ScreenCast()
    gst: subprocess.Popen[bytes] | None = None
    try:
        control = "--control" in sys.argv[1:]
        stream = cast.start(control=control)
        gst = subprocess.Popen(
            gstreamer_argv(stream.fd, stream.node, stream.width, stream.height),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(stream.fd,),
        )
        os.close(stream.fd)
        if gst.stdout is None:
            raise OSError("no pipe from GStreamer")
        sink = PortalInput(cast, stream.node) if control else None
        server = RfbServer(viewer, stream.width, stream.height, "allowhelp portal", sink)
        server.serve(gst.stdout.fileno())
    except PortalError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except StreamEnded as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except (ConnectionError, BrokenPipeError):
        return 0  # the viewer left
    finally:
        if gst is not None and gst.poll() is None:
            gst.terminate()
            try:
                gst.wait(5)
            except subprocess.TimeoutExpired:
                gst.kill()
                gst.wait()
        cast.close()
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
