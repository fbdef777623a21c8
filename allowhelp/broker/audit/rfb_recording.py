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

Limits, the seal, the digest in the end record and ``recording.stopped``
are the shell's (``recording.py``): :class:`RecordingLimits`, :class:`Stopped`,
:class:`Seal`, :func:`~allowhelp.broker.audit.recording.settle`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path

from allowhelp.broker.audit.cast_writer import Wrote, writers
from allowhelp.broker.audit.recording import (
    MARKERS,
    MEASURE_EVERY,
    SEAL_TIMEOUT,
    RecordingFile,
    RecordingLimits,
    Seal,
    StopHook,
    Stopped,
    StopReason,
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
from allowhelp.broker.audit.rfb_writer import WroteHashed, append_hashed

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
        self._inflight: list[bytes] = []
        self._job: asyncio.Future[WroteHashed] | None = None
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

    def close(self) -> str:
        """Seal: the writer writes what is left, fsyncs and closes. Returns the
        hex SHA-256 the whole file will have; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._cancel_timer()
            self._kick()
            if self._done.done():  # sealed early: the session ends now, claim or drop
                self._keep_seal()
        return self._expected()

    async def sealed(self, seconds: float = SEAL_TIMEOUT) -> Seal:
        """The file once the writer has finished (after ``close``); if the disk
        has not taken it in ``seconds``, what was queued, unsettled."""
        try:
            await asyncio.wait_for(asyncio.shield(self._done), seconds)
        except TimeoutError:
            log.error("recording %s: the disk has not taken its end in %.0f s", self.name, seconds)
            return Seal(self.name, self._expected(), self._queued, self._stopped, settled=False)
        if self._stop_audit is not None:
            await asyncio.wait([self._stop_audit], timeout=seconds)
        return Seal(self.name, self._digest.hexdigest(), self._written, self._stopped)

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

    def _stop(self, reason: StopReason, detail: str) -> None:
        if reason != "write_error":
            text = MARKERS[reason].encode()
            self._queue(frame_head(MARKER, self._millis(), len(text)) + text)
        self._stopped = Stopped(reason, self._queued, detail)
        self._audit_stop(self._stopped)
        self._cancel_timer()
        self._kick()
        self._wake()

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
        last = not self._recording
        if self._job is not None or self._fd < 0 or not (self._pending or last):
            return
        self._cancel_timer()
        chunks, fd = self._pending, self._fd
        self._pending, self._pending_bytes, self._inflight = [], 0, chunks
        if last:
            self._fd = -1
        size = sum(len(c) for c in chunks)
        measure = last or self._written + size - self._free_at >= MEASURE_EVERY
        job = functools.partial(
            append_hashed, fd, chunks, self._written, self._digest, last=last, measure=measure
        )
        self._job = self._loop.run_in_executor(writers(), job)
        self._job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Future[WroteHashed]) -> None:
        self._job, self._inflight = None, []
        try:
            done = job.result()
            wrote, self._digest = done.wrote, done.digest
        except Exception as exc:  # a bug in the writer: stop recording, not the screen
            log.exception("recording %s: the writer failed", self.name)
            wrote = Wrote(self._written, None, OSError(f"the writer failed: {exc}"))
        self._written = wrote.end
        if wrote.free is not None:
            self._free, self._free_at = wrote.free, wrote.end
        if wrote.error is not None and self._stopped is None:
            self._pending, self._pending_bytes = [], 0
            self._queued = self._written
            self._stop("write_error", wrote.error.strerror or str(wrote.error))
        if self._fd < 0 and self._job is None:
            self._sealed()
        elif self._pending_bytes >= BATCH or not self._recording:
            self._kick()
        elif self._pending and self._timer is None:
            self._timer = self._loop.call_later(FLUSH_DELAY, self._tick)
        self._wake()

    def _expected(self) -> str:
        """The digest the file has once the writer has written all that is queued."""
        digest = self._digest.copy()
        for data in (*self._inflight, *self._pending):
            digest.update(data)
        return digest.hexdigest()
