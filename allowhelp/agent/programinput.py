"""The technician's or viewer's bytes on their way to the program of a session.

Shared by the screen server the agent starts itself (``screen.py``) and the
shell or screen server a user's session helper starts (``remote.py``). On the
way: a view-only grant's filter (``rfbinput.ViewOnlyFilter``), then the check of
the viewer's version line when the agent said it ahead (``rfbgreeting``), then
the program's bridge.

Before the program's end is there (the screen server's socket does not answer
yet; the helper has not handed over the PTY) what comes is held, in order, up to
``MAX_EARLY_INPUT``; past that the channel is not read any more: the SSH window
fills and the sender waits (the broker, then the technician's browser). Nothing
is dropped, and the agent never holds more than that plus one window.
"""

from __future__ import annotations

from typing import Protocol

from allowhelp.agent.rfbgreeting import PacedOutput, SaidVersion
from allowhelp.agent.rfbinput import ViewOnlyFilter

MAX_EARLY_INPUT = 64 * 1024


class Reading(Protocol):
    """The channel the bytes come from (``GatedChannel``)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Bridge(Protocol):
    """The program's end (``FdBridge``)."""

    def write(self, data: bytes) -> None: ...


class ProgramInput:
    """Filter, version check, then the bridge; held (with backpressure) until it is there.

    ``write`` and ``attach`` raise ``RfbInputError`` on what a viewer may not send:
    the caller ends the session with it."""

    def __init__(
        self,
        channel: Reading,
        *,
        view_only_filter: ViewOnlyFilter | None = None,
        said: SaidVersion | None = None,
        paced: PacedOutput | None = None,
        limit: int = MAX_EARLY_INPUT,
    ) -> None:
        self._channel = channel
        self._filter = view_only_filter
        self._said = said
        self._paced = paced
        self._limit = limit
        self._bridge: Bridge | None = None
        self._held = bytearray()
        self._stopped_reading = False

    def write(self, data: bytes) -> None:
        if self._filter is not None:
            data = self._filter.feed(data)
        if self._said is not None:
            data = self._said.feed(data)
        if self._paced is not None:
            self._paced.release()
        if self._bridge is not None:
            self._bridge.write(data)
            return
        self._held += data
        if len(self._held) >= self._limit and not self._stopped_reading:
            self._stopped_reading = True
            self._channel.pause_reading()

    def attach(
        self,
        bridge: Bridge,
        *,
        said: SaidVersion | None = None,
        paced: PacedOutput | None = None,
    ) -> None:
        """The program's end is there: what was held goes on first, then the channel is
        read again (its buffered bytes come after, in order). ``said``/``paced``: the
        viewer's version was said ahead only now (the helper says whether it did)."""
        held, self._held = bytes(self._held), bytearray()
        if said is not None:
            self._said = said
            held = said.feed(held)  # what the viewer sent first (filtered already)
        if paced is not None:
            self._paced = paced
        if self._paced is not None:
            self._paced.release()  # the viewer's version may be in already
        self._bridge = bridge
        if held:
            bridge.write(held)
        if self._stopped_reading:
            self._stopped_reading = False
            self._channel.resume_reading()
