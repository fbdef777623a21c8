"""Screen recordings: the RFB stream of a screen session, with its SHA-256 for the audit log.

What is recorded (format: ``rfb_format.py``, docs/recordings.md): every byte
the PC's screen sends, as the technician's viewer gets it, and every byte a
technician's viewer sends on to the PC (keys, pointer, clipboard, requests)
with who sent it, each with its time.

Off the hot path, unlike the shell's recorder: the relay only frames a chunk
(a 9-byte head, no copy of the data) and goes on sending. Frames are handed to
a writer thread in batches (``BATCH`` bytes, or ``FLUSH_DELAY`` after the
first one waiting), one job in flight per recording; the thread writes them
with ``pwritev`` and hashes them (``rfb_writer.py``). The relay awaits only
when the writer is more than ``MAX_BEHIND`` bytes behind (a disk slower than
the screen slows the screen down instead of filling memory), or, once, when
the recording stopped and that stop is being audited (the picture shown after
a stop is never shown before the stop is on the record).

A ``kill -9`` loses what was waiting for its batch (at most ``FLUSH_DELAY``
of the stream) and may tear the last frame; ``rfb_recovery.py`` cuts that
frame and hashes the rest at the next start.

Limits, stops, the writer's jobs, the seal, the digest in the end record and
``recording.stopped`` are shared with the shell's recorder
(``recording_file.py``): :class:`RecordingLimits`, :class:`Stopped`,
:class:`Seal`, :func:`~allowhelp.broker.audit.recording_file.settle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from allowhelp.broker.audit.recording_file import (
    RecordingFile,
    RecordingLimits,
    StopHook,
    Stopped,
    register,
)
from allowhelp.broker.audit.rfb_format import (
    CLIENT,
    FRAME,
    MARKER,
    SERVER,
    SUFFIX,
    file_header,
    frame_head,
    sender_prefix,
)

log = logging.getLogger(__name__)

BATCH = 512 * 1024  # bytes framed before a hand-over to the writer
FLUSH_DELAY = 0.05  # seconds a frame waits at most for its batch
MAX_BEHIND = 8 << 20  # the relay waits when the writer is this far behind


class RfbRecorder(RecordingFile):
    """One screen session's recording file, fed by the screen relay on the event loop."""

    def __init__(
        self,
        folder: Path,
        session_id: str,
        meta: dict[str, object],
        *,
        limits: RecordingLimits | None = None,
        on_stop: StopHook | None = None,
    ) -> None:
        super().__init__(folder / f"{session_id}{SUFFIX}", limits, on_stop)
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stop_seen = False
        register(self)
        self._queue(file_header({**meta, "started": round(time.time(), 3)}))
        self._kick()

    @property
    def stopped(self) -> Stopped | None:
        return self._stopped

    # the relay's side (the event loop)

    def server(self, data: bytes) -> None:
        """Bytes from the PC, about to go to the technician."""
        if data and self._recording:
            self._frame(SERVER, b"", data)

    def client(self, data: bytes, sender: str) -> None:
        """Bytes from ``sender``'s viewer, about to go to the PC."""
        if data and self._recording:
            self._frame(CLIENT, sender_prefix(sender), data)

    @property
    def must_wait(self) -> bool:
        """The relay should await :meth:`keep_up` before it sends more."""
        return self._queued - self._written > MAX_BEHIND or (
            self._stop_audit is not None and not self._stop_seen
        )

    async def keep_up(self) -> None:
        """Return once the writer is no more than half ``MAX_BEHIND`` behind, and a
        stop is on the audit record; raise what auditing the stop raised."""
        self._kick()
        while self._queued - self._written > MAX_BEHIND // 2 and not self._done.done():
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        if self._stop_audit is not None:
            await asyncio.shield(self._stop_audit)
            self._stop_seen = True

    def _closing(self) -> None:
        self._cancel_timer()

    def _frame(self, kind: int, prefix: bytes, data: bytes) -> None:
        size = len(prefix) + len(data)
        over = self._over_limit(FRAME.size + size)
        if over is not None:
            self._stop(*over)
            return
        head = frame_head(kind, self._millis(), size)
        self._queue(head + prefix if prefix else head)
        self._queue(data)

    def _millis(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def _marker(self, text: str) -> None:
        data = text.encode()
        self._queue(frame_head(MARKER, self._millis(), len(data)) + data)

    def _stopping(self) -> None:
        self._cancel_timer()

    # the hand-over to the writer

    def _queue(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._queued += len(data)
        if self._pending_bytes >= BATCH:
            self._kick()
        elif self._timer is None and self._job is None:
            self._timer = self._loop.call_later(FLUSH_DELAY, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._kick()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _kick(self) -> None:
        """Give the writer what is pending, unless it is busy or done."""
        batch = self._batch()
        if batch is None:
            return
        self._cancel_timer()
        self._pending_bytes = 0
        self._submit(batch).add_done_callback(self._job_done)

    def _drop_pending(self) -> None:
        super()._drop_pending()
        self._pending_bytes = 0

    def _next(self) -> None:
        """A job is done: the next batch now if one is full or the file ends, else
        at the latest ``FLUSH_DELAY`` from now."""
        if self._pending_bytes >= BATCH or not self._recording:
            self._kick()
        elif self._pending and self._timer is None:
            self._timer = self._loop.call_later(FLUSH_DELAY, self._tick)
