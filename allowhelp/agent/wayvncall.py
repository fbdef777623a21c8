"""Every output of a wlroots desktop at once: one wayvnc per output, composed into one picture.

    python3 -m allowhelp.agent.wayvncall [--control]   (stdin and stdout: one end of a socketpair)

wayvnc 0.5 captures one output (``--output``), so for an "all monitors" grant the
session helper runs this, as the user, on a socketpair exactly like the portal
engine: RFB on its stdin/stdout, nothing listening on TCP. It:

1. asks sway for its outputs now (``monitors.session_monitors``: names, sizes,
   places), none → exits saying so;
2. makes one private folder (``wayvnc.runtime_folder``, 0700) and starts one
   wayvnc per output on its own UNIX socket there (``wayvnc.wayvnc_argv``:
   ``--config=/dev/null``, ``--output=NAME``, ``--render-cursor``, and
   ``--disable-input`` unless ``--control``), in this process's group;
3. reads each as a viewer (``rfbupstream.py``, Raw, BGRx, one thread each)
   straight into its place in one picture (``rfbcanvas.py``; sway's layout,
   ``castlayout.py``, sizes as wayvnc serves them), and serves the technician
   that picture's changed rectangles (``rfbserver.py``);
4. on ``--control``, sends the technician's pointer to the wayvnc of the output
   under it (at the point in that output) and keys to the first one (every
   wayvnc's virtual keyboard types into the same seat).

Exit status 0 when the viewer leaves or on SIGTERM (every wayvnc ended, the
folder removed); otherwise 1 with one line on stderr saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from allowhelp.agent.castlayout import Layout, LayoutError, Stream, Tile, layout
from allowhelp.agent.monitors import session_monitors
from allowhelp.agent.rfbcanvas import Canvas
from allowhelp.agent.rfbmain import EngineError, run_engine
from allowhelp.agent.rfbserver import RfbServer
from allowhelp.agent.rfbupstream import Upstream, UpstreamError
from allowhelp.agent.wayvnc import WayvncLaunch, private_folder, wayvnc_program
from allowhelp.protocol.monitors import Monitor


class RelayInput:
    """The technician's input, to the wayvnc of the output under the pointer."""

    def __init__(self, upstreams: Sequence[Upstream], picture: Layout) -> None:
        self._upstreams = upstreams
        self._picture = picture

    def key(self, keysym: int, down: bool) -> None:
        self._upstreams[0].key(keysym, down)

    def pointer(self, mask: int, x: int, y: int) -> None:
        spot = self._picture.at(x, y)
        if spot is not None:  # between outputs: nowhere to point
            tile, tile_x, tile_y = spot
            self._upstreams[tile.node].pointer(mask, tile_x, tile_y)


class Outputs:
    """One wayvnc per output in one private folder; ``close`` ends them and removes it.

    Made before the ``try`` whose ``finally`` closes it, started inside: a SIGTERM
    (SystemExit) at any moment of the start-up finds the folder known to ``close``."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.launches: list[WayvncLaunch] = []
        self.upstreams: list[Upstream] = []

    def start(self, env: Mapping[str, str], monitors: Sequence[Monitor], *, control: bool) -> None:
        wayvnc_program(env)  # before any folder: not installed says so, and leaves nothing
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:  # no SIGTERM between the folder made and the folder known
            self.folder = private_folder(env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        with (self.folder / "wayvnc.log").open("wb") as log:
            for index, monitor in enumerate(monitors):
                self.launches.append(
                    WayvncLaunch(
                        env,
                        view_only=not control,
                        output=monitor.name,
                        folder=self.folder,
                        name=f"rfb-{index}.sock",
                        stderr=log,
                    )
                )

    def connect(self) -> list[Upstream]:
        """A reader on each wayvnc, once they all answer (``WayvncLaunch.connect``)."""

        async def connected() -> list[socket.socket]:
            return [await launch.connect() for launch in self.launches]

        try:
            socks = asyncio.run(connected())
        except RuntimeError as exc:
            raise EngineError(f"{exc}: {self.last_words()}") from exc
        self.upstreams = [Upstream(sock) for sock in socks]
        return self.upstreams

    def last_words(self) -> str:
        """The last line the wayvnc wrote (they share one log in the folder)."""
        if self.folder is not None:
            with contextlib.suppress(OSError):
                log = (self.folder / "wayvnc.log").read_text(errors="replace")
                lines = log.strip().splitlines()
                return lines[-1][:200] if lines else "(nothing said)"
        return "(nothing said)"

    def close(self) -> None:
        """The folder first (the session helper's SIGKILL may follow its SIGTERM within
        seconds, while the wayvnc are still being waited for), then every wayvnc."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        for upstream in self.upstreams:
            upstream.close()
        for launch in self.launches:
            if launch.proc.poll() is None:
                launch.proc.terminate()
        for launch in self.launches:
            try:
                launch.proc.wait(5)
            except subprocess.TimeoutExpired:
                launch.proc.kill()
                launch.proc.wait()


def picture_of(monitors: Sequence[Monitor], upstreams: Sequence[Upstream]) -> Layout:
    """Each output where sway puts it, at the size wayvnc serves (tile node: its index)."""
    return layout(
        [
            Stream(index, upstream.width, upstream.height, (monitor.x, monitor.y))
            for index, (monitor, upstream) in enumerate(zip(monitors, upstreams, strict=True))
        ]
    )


def _read_into(upstream: Upstream, canvas: Canvas, tile: Tile) -> None:
    """A reader thread: the output's rectangles into its place; its end ends the picture."""
    try:
        upstream.run(canvas, tile.x, tile.y, tile.node)
    except (UpstreamError, OSError) as exc:
        canvas.stop(f"an output's picture stopped: {exc}")


def serve(viewer: socket.socket, env: Mapping[str, str], *, control: bool) -> None:
    monitors = session_monitors(env, "wlroots")
    if not monitors:
        raise EngineError("sway reported no outputs")
    outputs = Outputs()
    canvas: Canvas | None = None
    try:
        outputs.start(env, monitors, control=control)
        upstreams = outputs.connect()
        for upstream in upstreams:
            upstream.handshake()
        picture = picture_of(monitors, upstreams)
        canvas = Canvas(picture.width, picture.height, len(picture.tiles))
        for tile in picture.tiles:
            reader = threading.Thread(
                target=_read_into, args=(upstreams[tile.node], canvas, tile), daemon=True
            )
            reader.start()
        sink = RelayInput(upstreams, picture) if control else None
        name = "allowhelp wayvnc"
        RfbServer(viewer, picture.width, picture.height, name, sink, canvas=canvas).serve()
    finally:
        outputs.close()
        if canvas is not None:
            canvas.close()


def main() -> int:
    def serving(viewer: socket.socket) -> None:
        serve(viewer, os.environ, control="--control" in sys.argv[1:])

    return run_engine(serving, (LayoutError, RuntimeError), "the outputs could not be served")


if __name__ == "__main__":
    sys.exit(main())
