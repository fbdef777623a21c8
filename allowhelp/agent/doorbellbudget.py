"""How much the doorbell's stream may carry: bytes and reads per window.

The broker's stream is a beat of some 20 bytes every 20 s and a ring now and
then (``tunnel/doorbell.py``: a ring's reason is sent once while it waits). A
peer that sends far more, say a fast stream of one-byte chunks, each its own
TLS record and so its own read, would have the doorbell, whose whole point is
to cost the PC nothing while idle, spend a core reading and decoding it. Past
this budget the stream is dropped and dialled again after the backoff (logged),
and the time it stood does not count as stable, so a peer that floods every
stream it is given gets one window's worth each backoff (at most 30 s).
Standard library only, like the rest of the doorbell.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 10.0  # seconds
MAX_BYTES = 64 * 1024  # per window: some 3,000 beats or rings
MAX_READS = 256  # per window: a read per beat or ring, and a burst of rings


@dataclass
class ReadBudget:
    """One stream's reads in the current window (``spend`` on each read)."""

    window_start: float = float("-inf")
    bytes: int = 0
    reads: int = 0

    def spend(self, size: int, now: float) -> str | None:
        """Count a read of ``size`` bytes; why the stream is over budget, else None."""
        if now - self.window_start >= WINDOW:
            self.window_start, self.bytes, self.reads = now, 0, 0
        self.bytes += size
        self.reads += 1
        if self.bytes > MAX_BYTES:
            return f"over {MAX_BYTES} bytes in {WINDOW:g} s"
        if self.reads > MAX_READS:
            return f"over {MAX_READS} reads in {WINDOW:g} s"
        return None
