"""Two monitors on one Xvfb for the monitor-picking tests.

Xvfb has one screen; ``xrandr --setmonitor`` cuts it into two RandR monitors
(``left`` and ``right``, side by side), which is what a PC with two screens
looks like to xrandr and to x11vnc. ``-noreset`` keeps them: without it Xvfb
resets (and forgets them) when its last client goes. Each half gets a window
of its own colour, so a picture says which half it shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from screenkit import MARK_WINDOW, _read_line

HALF = (1280, 800)
SIZE = (2 * HALF[0], HALF[1])
LEFT_COLOUR = (0xC0, 0x20, 0x20)
RIGHT_COLOUR = (0x20, 0x40, 0xC0)
BOX = (200, 150, 120, 90)  # x, y, width, height inside each half


@dataclass
class TwoMonitors:
    display: str
    proc: subprocess.Popen[bytes]
    windows: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display}

    def xrandr(self, *args: str) -> str:
        done = subprocess.run(
            ["xrandr", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def close(self) -> None:
        for proc in (*self.windows, self.proc):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def start_two_monitors(folder: Path) -> TwoMonitors:
    read_end, write_end = os.pipe()
    width, height = SIZE
    with (folder / "xvfb.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *("Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24"),
                *("-nolisten", "tcp", "-br", "-noreset"),
            ],
            pass_fds=[write_end],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    os.close(write_end)
    try:
        number = _read_line(read_end, 15)
    finally:
        os.close(read_end)
    server = TwoMonitors(f":{number}", proc)
    try:
        half_w, half_h = HALF
        server.xrandr("--setmonitor", "left", f"{half_w}/338x{half_h}/211+0+0", "screen")
        server.xrandr("--setmonitor", "right", f"{half_w}/338x{half_h}/211+{half_w}+0", "none")
        for offset, colour in ((0, LEFT_COLOUR), (half_w, RIGHT_COLOUR)):
            server.windows.append(_window(server, colour, offset))
    except BaseException:
        server.close()
        raise
    return server


def _window(
    server: TwoMonitors, colour: tuple[int, int, int], offset: int
) -> subprocess.Popen[bytes]:
    x, y, width, height = BOX
    name = "#" + "".join(f"{part:02x}" for part in colour)
    proc = subprocess.Popen(
        [sys.executable, "-c", MARK_WINDOW, name, f"{width}x{height}+{x + offset}+{y}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server.env(),
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        assert _read_line(proc.stdout.fileno(), 15) == "shown"
    finally:
        proc.stdout.close()
    return proc
