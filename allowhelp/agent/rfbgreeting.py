"""The viewer's RFB version, said to x11vnc by the agent ahead of the viewer.

x11vnc's library (libvncserver) waits up to 100 ms on every new connection to
see whether the client opens with ``GET `` (a WebSocket) before it sends its own
ProtocolVersion; an RFB viewer says nothing first, so every screen paid the
whole 100 ms (most of x11vnc's share of the first picture; docs/benchmarks.md
§7). The only client version the broker lets through is ``RFB 003.008``
(``broker/relay/rfb.py``), so the agent writes that line into x11vnc's socket
when it starts it: x11vnc sees ``RFB `` at once, sends its version and reads
ours. When the viewer's own version arrives it must be exactly that line; it
is checked and dropped (:class:`SaidVersion`), and anything else ends the
session (``RfbInputError``) rather than reach the server out of step.

Sans-I/O, like ``rfbinput.ViewOnlyFilter``, which sees the viewer's bytes
before this does (it follows the full handshake, the version included).

The other way, x11vnc (greeted early) sends its security types right after its
own version, where a server that waited for the viewer sends them after the
viewer's version. noVNC takes one handshake step per WebSocket message, so both
in one message would stall it: :class:`PacedOutput` passes the server's version
on at once and holds what follows until the viewer has said theirs.
"""

from __future__ import annotations

from typing import Protocol

from allowhelp.agent.rfbinput import RfbInputError

RFB_VERSION = b"RFB 003.008\n"


class SaidVersion:
    """Viewer → server bytes in, the same bytes less the version already said."""

    def __init__(self, said: bytes = RFB_VERSION) -> None:
        self._said = said
        self._matched = 0

    @property
    def done(self) -> bool:
        return self._matched == len(self._said)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        take = min(len(data), len(self._said) - self._matched)
        expected = self._said[self._matched : self._matched + take]
        if data[:take] != expected:
            shown = (self._said[: self._matched] + data[:take]).decode("ascii", "replace")
            raise RfbInputError(
                f"the viewer spoke {shown.strip()!r} first; the screen needs RFB 003.008"
            )
        self._matched += take
        return data[take:]


class _Output(Protocol):  # fdbridge.Output, not imported: this module has no I/O
    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class PacedOutput:
    """Server → viewer: its version line at once, the rest once :meth:`release`d (the
    viewer said its version), as a server that waited for the viewer would send it."""

    def __init__(self, output: _Output, said: SaidVersion) -> None:
        self._output = output
        self._said = said
        self._first = len(RFB_VERSION)  # the server's version: not held
        self._held = bytearray()

    def write(self, data: bytes) -> None:
        if self._first:
            now, data = data[: self._first], data[self._first :]
            self._first -= len(now)
            self._output.write(now)
        if not data:
            return
        if self._said.done and not self._held:
            self._output.write(data)
        else:
            self._held += data

    def release(self) -> None:
        """The viewer's version is in: what the server said after its own goes on."""
        if self._said.done and self._held:
            held, self._held = bytes(self._held), bytearray()
            self._output.write(held)

    def pause_reading(self) -> None:
        self._output.pause_reading()

    def resume_reading(self) -> None:
        self._output.resume_reading()
