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
"""

from __future__ import annotations

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
