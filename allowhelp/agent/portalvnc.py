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

``--all-monitors`` (the technician asked for every monitor): the dialog lets the
user pick several monitors (the portal's ``multiple``); the portal gives one
stream each, with its size and place in the desktop's layout. One GStreamer
process reads every stream (one ``pipewiresrc`` branch and one pipe each) and
the RFB server draws each monitor's frames at its place in one picture
(``castlayout.py``); the viewer's pointer goes to the monitor under it, at the
point in that monitor's stream.

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
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from allowhelp.agent.castlayout import Layout, LayoutError, layout
from allowhelp.agent.rfbmain import EngineError, run_engine
from allowhelp.agent.rfbserver import Piece, RfbServer

STREAM_FORMAT = "BGRx"


def gstreamer_argv(fd: int, branches: Sequence[tuple[int, int, int, int]]) -> list[str]:
    """One pipeline: per ``(node, width, height, out_fd)`` a branch from the PipeWire
    remote ``fd`` to whole BGRx frames of that size on ``out_fd``."""
    argv = ["gst-launch-1.0", "-q"]
    for node, width, height, out in branches:
        caps = f"video/x-raw,format={STREAM_FORMAT},width={width},height={height}"
        argv += ["pipewiresrc", f"fd={fd}", f"path={node}", "always-copy=true", "!"]
        argv += ["videoconvert", "!", "videoscale", "!", caps, "!"]
        argv += ["fdsink", f"fd={out}", "sync=false"]
    return argv


# RFB button mask bits → Linux input button codes (BTN_LEFT, BTN_MIDDLE, BTN_RIGHT)
BUTTONS = ((1, 0x110), (2, 0x112), (4, 0x111))
WHEEL = ((8, -1), (16, 1))  # wheel up, wheel down: one step each press


class PortalInput:
    """The viewer's keys and pointer, through the RemoteDesktop portal (control grants)."""

    def __init__(self, cast: Any, picture: Layout) -> None:
        self._cast = cast
        self._picture = picture
        self._mask = 0

    def key(self, keysym: int, down: bool) -> None:
        self._cast.key(keysym, down)

    def pointer(self, mask: int, x: int, y: int) -> None:
        spot = self._picture.at(x, y)
        if spot is not None:  # between monitors: no move, the buttons still count
            tile, tile_x, tile_y = spot
            self._cast.move(tile.node, tile_x, tile_y)
        for bit, button in BUTTONS:
            if (mask ^ self._mask) & bit:
                self._cast.button(button, bool(mask & bit))
        for bit, steps in WHEEL:
            if mask & bit and not self._mask & bit:
                self._cast.scroll(steps)
        self._mask = mask


def start_gstreamer(remote: int, picture: Layout) -> tuple[subprocess.Popen[bytes], list[Piece]]:
    """GStreamer on the PipeWire ``remote`` (closed here): one pipe of frames per tile."""
    pipes = [os.pipe() for _ in picture.tiles]
    try:
        branches = [
            (t.node, t.width, t.height, w) for t, (_, w) in zip(picture.tiles, pipes, strict=True)
        ]
        gst = subprocess.Popen(
            gstreamer_argv(remote, branches),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(remote, *(w for _, w in pipes)),
        )
    except OSError:
        for pair in pipes:
            for fd in pair:
                os.close(fd)
        raise
    finally:
        os.close(remote)
    for _, write_end in pipes:
        os.close(write_end)
    return gst, [
        Piece(r, t.x, t.y, t.width, t.height)
        for t, (r, _) in zip(picture.tiles, pipes, strict=True)
    ]


def serve(viewer: socket.socket, *, control: bool, every_monitor: bool) -> None:
    """The portal's session, GStreamer and the RFB server, until one ends; all closed."""
    try:
        from allowhelp.agent.portal import ScreenCast  # noqa: PLC0415 - needs gi
    except ImportError as exc:
        raise EngineError(
            "the portal engine needs PyGObject for this Python"
            " (Debian: apt install python3-gi gir1.2-glib-2.0)"
        ) from exc
    cast = ScreenCast()
    gst: subprocess.Popen[bytes] | None = None
    pieces: list[Piece] = []
    try:
        casting = cast.start(control=control, every_monitor=every_monitor)
        try:
            picture = layout(casting.streams)
        except LayoutError:
            os.close(casting.fd)
            raise
        gst, pieces = start_gstreamer(casting.fd, picture)
        sink = PortalInput(cast, picture) if control else None
        server = RfbServer(viewer, picture.width, picture.height, "allowhelp portal", sink)
        server.serve(pieces)
    finally:
        if gst is not None and gst.poll() is None:
            gst.terminate()
            try:
                gst.wait(5)
            except subprocess.TimeoutExpired:
                gst.kill()
                gst.wait()
        cast.close()
        for piece in pieces:
            os.close(piece.fd)


def main() -> int:
    def serving(viewer: socket.socket) -> None:
        options = sys.argv[1:]
        serve(viewer, control="--control" in options, every_monitor="--all-monitors" in options)

    return run_engine(serving, (LayoutError,), "GStreamer could not start")


if __name__ == "__main__":
    sys.exit(main())
