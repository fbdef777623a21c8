"""Where each monitor's stream goes in the one picture the portal engine serves (sans-I/O).

On an "all monitors" grant the ScreenCast portal gives one PipeWire stream per
monitor the person at the PC shared, each with its ``size`` and (GNOME, for
monitor streams) its ``position`` in the desktop's layout. ``layout`` places
them in one picture as the desktop lays them out: the smallest rectangle that
holds them all, its top left corner at the leftmost and topmost monitor's edge.
Where the portal gave no position for some stream, or two streams would
overlap, the streams are put side by side, left to right, in the portal's
order instead (every pixel still shown once; the technician sees a row).

A tile also says which stream the viewer's pointer lands on: ``Layout.at``
turns a point of the picture into the stream's node and the point in that
stream, which is what the RemoteDesktop portal's
``NotifyPointerMotionAbsolute`` takes. A point between monitors (a layout
that is not a rectangle) lands on none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_SIDE = 16384  # a stream's or the picture's width or height
MAX_PIXELS = 64 * 1024 * 1024  # the whole picture (4 bytes each, kept in memory)


class LayoutError(ValueError):
    """The portal's streams cannot make one picture; the message says why."""


@dataclass(frozen=True)
class Stream:
    """One PipeWire stream as the portal described it."""

    node: int
    width: int
    height: int
    position: tuple[int, int] | None = None  # in the desktop's layout; None: not given


@dataclass(frozen=True)
class Tile:
    """A stream's place in the picture."""

    node: int
    x: int
    y: int
    width: int
    height: int

    def holds(self, x: int, y: int) -> bool:
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height

    def overlaps(self, other: Tile) -> bool:
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    tiles: tuple[Tile, ...]

    def at(self, x: int, y: int) -> tuple[Tile, int, int] | None:
        """The tile under the picture's point (x, y) and the point in its stream."""
        for tile in self.tiles:
            if tile.holds(x, y):
                return tile, x - tile.x, y - tile.y
        return None


def layout(streams: Sequence[Stream]) -> Layout:
    """The picture of these streams; LayoutError when there is none or it is too big."""
    if not streams:
        raise LayoutError("the screen-cast portal gave no stream")
    for stream in streams:
        if not (0 < stream.width <= MAX_SIDE and 0 < stream.height <= MAX_SIDE):
            raise LayoutError("the screen-cast portal gave a stream without a usable size")
    tiles = _as_placed(streams) or _side_by_side(streams)
    width = max(t.x + t.width for t in tiles)
    height = max(t.y + t.height for t in tiles)
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise LayoutError(
            f"the shared monitors make a picture of {width}x{height}, more than this"
            f" engine serves ({MAX_SIDE} a side, {MAX_PIXELS // (1024 * 1024)} Mpixels)"
        )
    return Layout(width, height, tiles)


def _as_placed(streams: Sequence[Stream]) -> tuple[Tile, ...]:
    """The desktop's own layout, moved to (0, 0); () when it cannot be used."""
    positions = [s.position for s in streams]
    if any(p is None for p in positions):
        return ()
    left = min(p[0] for p in positions if p is not None)
    top = min(p[1] for p in positions if p is not None)
    tiles = tuple(
        Tile(s.node, p[0] - left, p[1] - top, s.width, s.height)
        for s, p in zip(streams, positions, strict=True)
        if p is not None
    )
    for index, tile in enumerate(tiles):
        if any(tile.overlaps(other) for other in tiles[index + 1 :]):
            return ()
    return tiles


def _side_by_side(streams: Sequence[Stream]) -> tuple[Tile, ...]:
    tiles: list[Tile] = []
    x = 0
    for stream in streams:
        tiles.append(Tile(stream.node, x, 0, stream.width, stream.height))
        x += stream.width
    return tuple(tiles)


def single(node: int, width: int, height: int) -> Layout:
    """The picture of one stream (one monitor)."""
    return Layout(width, height, (Tile(node, 0, 0, width, height),))
