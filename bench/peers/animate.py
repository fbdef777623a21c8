"""A busy X screen without a toolkit: ``python -m bench.peers.animate`` on ``$DISPLAY``.

A full-screen window that redraws 60 lines of fresh random base64 text every
33 ms through libX11 (ctypes), like a terminal running ``base64 /dev/urandom``:
every frame changes most of the screen with text that compresses as text does.
Neither xterm nor tkinter is installed on the bench machine; libX11 is (Xvfb
and x11vnc need it).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import os
import sys
import time
from pathlib import Path

from bench.common import PY, Procs, wait_for

WIDTH, HEIGHT, LINES, PERIOD_S = 1280, 800, 60, 0.033


def main() -> None:
    name = ctypes.util.find_library("X11")
    if name is None:
        sys.exit("animate: libX11 not found")
    x = ctypes.CDLL(name)
    x.XOpenDisplay.restype = ctypes.c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XDefaultRootWindow.restype = ctypes.c_ulong
    x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x.XCreateSimpleWindow.restype = ctypes.c_ulong
    x.XCreateSimpleWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong, *(ctypes.c_int,) * 2]
    x.XCreateSimpleWindow.argtypes += [*(ctypes.c_uint,) * 3, ctypes.c_ulong, ctypes.c_ulong]
    x.XMapRaised.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    x.XCreateGC.restype = ctypes.c_void_p
    x.XCreateGC.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p]
    x.XSetForeground.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
    x.XFillRectangle.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
    x.XFillRectangle.argtypes += [ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
    x.XDrawString.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
    x.XDrawString.argtypes += [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    x.XFlush.argtypes = [ctypes.c_void_p]
    x.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
    display = x.XOpenDisplay(None)
    if not display:
        sys.exit("animate: cannot open $DISPLAY")
    root = x.XDefaultRootWindow(display)
    window = x.XCreateSimpleWindow(display, root, 0, 0, WIDTH, HEIGHT, 0, 0, 0)
    x.XMapRaised(display, window)
    gc = x.XCreateGC(display, window, 0, None)
    step = HEIGHT // LINES
    chars = WIDTH // 6
    frame = 0
    while True:
        started = time.monotonic()
        x.XSetForeground(display, gc, 0x101010)
        x.XFillRectangle(display, window, gc, 0, 0, WIDTH, HEIGHT)
        x.XSetForeground(display, gc, 0x30E030 + (frame % 64) * 0x020000)
        for line in range(LINES):
            text = base64.b64encode(os.urandom(chars))[:chars]
            x.XDrawString(display, window, gc, 2, (line + 1) * step - 2, text, len(text))
        x.XSync(display, 0)
        frame += 1
        time.sleep(max(0.0, PERIOD_S - (time.monotonic() - started)))


def start_busy_screen(procs: Procs, folder: Path, busy: bool = True) -> str:
    """A private Xvfb (WIDTHxHEIGHTx24) and, if ``busy``, this animation on it; the display."""
    from bench.screen import free_display  # noqa: PLC0415 - bench.screen imports websockets etc.

    n = free_display()
    display = f":{n}"
    procs.start(
        ["Xvfb", display, "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp", "-noreset"],
        log_path=folder / "xvfb.log",
    )
    wait_for(lambda: Path(f"/tmp/.X11-unix/X{n}").exists(), 15, "Xvfb to listen")
    if busy:
        procs.start(
            [PY, "-m", "bench.peers.animate"],
            log_path=folder / "animate.log",
            env={"DISPLAY": display},
        )
    return display


if __name__ == "__main__":
    main()
