"""The one picture an RFB server serves, and what changed in it since it was sent.

``rfbserver`` sends from it; its sources write into it: pipes of whole frames
(the band that differs is copied in) and ``rfbupstream``'s readers (rectangles
received straight into their place, from their own threads). Sans-I/O but for
the wake-up pipe that stops the server's wait when a reader thread reports
damage.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence

BPP = 4
FIRST_PICTURE_WAIT = 2.0  # seconds: the other monitors' first frames after the first one
MAX_RECTS = 16  # more damaged rectangles than this are sent as the one that holds them all

Rect = tuple[int, int, int, int]  # x, y, width, height


class Canvas:
    """The one picture (BGRx), what changed in it since it was last sent, and its sources.

    ``sources``: how many sources the first picture waits for (each says so by
    calling ``damaged`` once). ``damaged`` may be called from any thread."""

    def __init__(self, width: int, height: int, sources: int) -> None:
        self.width = width
        self.height = height
        self.stride = width * BPP
        self.pixels = memoryview(bytearray(self.stride * height))
        self._lock = threading.Lock()
        self._damage: list[Rect] = []
        self._seen = [False] * sources
        self._first_at: float | None = None
        self.wake_fd, self._wake_write = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_write, False)
        self._woken = False
        self._closed = False
        self.stopped = ""  # why a source stopped: the picture cannot go on

    def row(self, x: int, y: int, width: int) -> memoryview:
        """The pixels of row ``y`` from ``x``, ``width`` wide: written into in place."""
        at = y * self.stride + x * BPP
        return self.pixels[at : at + width * BPP]

    def blit(self, x: int, y: int, width: int, height: int, pixels: memoryview) -> None:
        """Copy a ``width`` x ``height`` rectangle of packed rows to (x, y)."""
        row = width * BPP
        if x == 0 and width == self.width:
            at = y * self.stride
            self.pixels[at : at + row * height] = pixels[: row * height]
            return
        for line in range(height):
            self.row(x, y + line, width)[:] = pixels[line * row : (line + 1) * row]

    def damaged(self, rect: Rect | None, source: int) -> None:
        """``rect`` has changed (None: nothing did), and ``source`` has given a picture."""
        with self._lock:
            if rect is not None and rect[2] > 0 and rect[3] > 0:
                self._add(rect)
            self._seen[source] = True
            if self._first_at is None:
                self._first_at = time.monotonic()
        self._wake()

    def stop(self, reason: str) -> None:
        """A source stopped (from its thread): the server ends the picture with ``reason``."""
        with self._lock:
            self.stopped = self.stopped or reason
        self._wake()

    def _wake(self) -> None:
        with self._lock:  # held while writing: ``close`` cannot close the pipe under it
            if self._woken or self._closed:
                return
            self._woken = True
            with contextlib.suppress(OSError):  # full: already woken
                os.write(self._wake_write, b"\0")

    def _add(self, rect: Rect) -> None:
        x, y, w, h = rect
        for known in self._damage:
            kx, ky, kw, kh = known
            if kx <= x and ky <= y and x + w <= kx + kw and y + h <= ky + kh:
                return  # already inside
        self._damage.append(rect)
        if len(self._damage) > MAX_RECTS:
            self._damage = [bounding(self._damage)]

    def take(self) -> list[Rect]:
        """The damage so far, emptied."""
        with self._lock:
            taken, self._damage = self._damage, []
        return taken

    def drain(self) -> None:
        """The server has woken: empty the wake-up pipe, so the next report wakes it."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass
        with self._lock:
            self._woken = False

    def ready(self) -> bool:
        """A first picture may go: every source has given one, or the wait is over."""
        with self._lock:
            if self._first_at is None:
                return False
            return all(self._seen) or time.monotonic() >= self._first_at + FIRST_PICTURE_WAIT

    def patience(self) -> float | None:
        """How long the server may sleep: until the first picture is due, or forever."""
        if self._first_at is None or self.ready():
            return None
        return max(0.0, self._first_at + FIRST_PICTURE_WAIT - time.monotonic())

    def close(self) -> None:
        """The wake-up pipe goes; a reader thread still ending wakes nothing after."""
        with self._lock:
            self._closed = True
            for fd in (self.wake_fd, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)


def bounding(rects: Sequence[Rect]) -> Rect:
    """The smallest rectangle holding all of ``rects``."""
    left = min(r[0] for r in rects)
    top = min(r[1] for r in rects)
    right = max(r[0] + r[2] for r in rects)
    bottom = max(r[1] + r[3] for r in rects)
    return left, top, right - left, bottom - top
