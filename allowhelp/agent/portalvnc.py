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

View-only only: it never asks for the RemoteDesktop portal and never injects a
key or a pointer event (input from the viewer is read and dropped). A control
grant on a portal desktop is refused before this starts (``screen.launch_screen``).

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
        stream = cast.start()
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
        server = RfbServer(viewer, stream.width, stream.height, name="allowhelp portal")
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
