"""What the shell's and the screen's recorders share: the file, its limits, its seal.

A recording file is created once (never reused, 0600) and written by a writer
thread (``rfb_writer.append_hashed``: one job in flight per recording, from a
small shared pool), which hashes what it wrote into a copy of the digest; the
loop adopts a job's digest only once the job has written its bytes, so the
digest is always of exactly what is on disk.

Limits (:class:`RecordingLimits`): a per-recording cap and a free-space floor.
When one is hit, or a write fails, the recording stops for good (a marker says
why, except after a write error), ``on_stop`` is called (the session layer
audits ``recording.stopped``) and the session goes on.

Sealing: ``close`` is synchronous (the relay's stop path) and returns the digest
of everything queued; :func:`settle` awaits the writer and gives the digest of
what is on disk, which the session registry puts into the end record.

The formats and how each is fed are the recorders' own: the shell's asciicast
(``recording.py``) and the screen's RFB stream (``rfb_recording.py``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from allowhelp.broker.audit.cast_writer import Wrote, free_bytes, writers
from allowhelp.broker.audit.rfb_writer import WroteHashed, append_hashed

log = logging.getLogger(__name__)

StopReason = Literal["cap", "low_space", "write_error"]
# The text of the marker a stopped recording ends with (asciinema shows markers).
MARKERS: dict[StopReason, str] = {
    "cap": "recording stopped: size cap reached",
    "low_space": "recording stopped: low disk space",
    "write_error": "recording stopped: write error",
}
MARKER_ROOM = 128  # bytes kept under the cap for that marker
SHARED_FLOOR = 0.05  # of a filesystem the audit log shares with the recordings
SEAL_TIMEOUT = 10.0  # the longest an end record waits for its recording's last write
SEAL_KEPT = 60.0  # an unclaimed seal is dropped this long after the file is sealed
MEASURE_EVERY = 1 << 20  # free space is read again after this many bytes written


@dataclass(frozen=True)
class RecordingLimits:
    max_bytes: int = 512 << 20
    min_free: int = 1 << 30
    protect: Path | None = None  # the data folder (audit log): it keeps its own floor

    def floor(self, folder: Path) -> int:
        """Free bytes recordings leave on ``folder``'s filesystem: ``min_free``,
        and at least 5 % of it when the audit log lives there too."""
        if self.protect is None or not _same_filesystem(folder, self.protect):
            return self.min_free
        st = os.statvfs(folder)
        return max(self.min_free, int(st.f_blocks * st.f_frsize * SHARED_FLOOR))


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return True  # cannot tell: protect


@dataclass(frozen=True)
class Stopped:
    """Why a recording stopped before its session ended."""

    reason: StopReason
    recorded_bytes: int  # the file's size once sealed
    detail: str

    def details(self) -> dict[str, object]:
        return {"reason": self.reason, "recorded_bytes": self.recorded_bytes, "detail": self.detail}


@dataclass(frozen=True)
class Seal:
    """A recording as its end record describes it."""

    name: str
    sha256: str
    size: int
    stopped: Stopped | None = None
    settled: bool = True  # False: the writer had not finished; sha256 is what was queued

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {"recording_bytes": self.size}
        if self.stopped is not None:
            out |= {"recording_truncated": True, "recording_stopped": self.stopped.reason}
        if not self.settled:
            out["recording_unsettled"] = True
        return out


StopHook = Callable[[Stopped], Awaitable[object]]


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Sealable(Named, Protocol):
    """A recorder the registry can claim the seal of (shell or screen)."""

    async def sealed(self, seconds: float = SEAL_TIMEOUT) -> Seal: ...


# Recordings by file name, from their start until the registry claims the seal.
_open: dict[str, Sealable] = {}


def register(recorder: Sealable) -> None:
    """Keep ``recorder`` until its seal is claimed by :func:`settle`."""
    _open[recorder.name] = recorder


def forget(recorder: Named) -> None:
    """Drop an unclaimed seal (its session never ended here)."""
    if _open.get(recorder.name) is recorder:
        del _open[recorder.name]


def open_recording(name: str) -> Sealable | None:
    """The recorder still writing (or sealing) ``name`` in this process, if any."""
    return _open.get(name)


def is_open(name: str) -> bool:
    """A recording of this process whose seal has not been claimed yet."""
    return name in _open


async def settle(name: str, seconds: float = SEAL_TIMEOUT) -> Seal | None:
    """The seal of the recording ``name`` once its file is complete on disk
    (None if this process has no such recording, e.g. after a restart)."""
    recorder = _open.pop(name, None)
    return None if recorder is None else await recorder.sealed(seconds)


@dataclass(frozen=True)
class Batch:
    """What ``_kick`` hands to the writer: pending chunks, and whether the file ends."""

    fd: int
    chunks: list[bytes]
    size: int
    last: bool
    measure: bool


class RecordingFile:
    """The file (created, never reused, 0600), its limits, the stop's audit, who
    waits on the writer, the writer's jobs and the seal. A recorder adds its
    format: ``_queue`` and ``_kick`` (when to hand pending bytes over), and
    ``_marker`` (how a stop is marked in the file)."""

    def __init__(
        self, path: Path, limits: RecordingLimits | None, on_stop: StopHook | None
    ) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._loop = asyncio.get_running_loop()
        self._limits = limits or RecordingLimits()
        self._floor = self._limits.floor(path.parent)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._on_stop = on_stop
        self._start = time.monotonic()
        self._digest = hashlib.sha256()  # of what is on disk
        self._pending: list[bytes] = []
        self._inflight: list[bytes] = []  # the running job's chunks (``_expected``)
        self._job: asyncio.Future[WroteHashed] | None = None
        self._queued = 0  # bytes accepted: the file's size once the writer catches up
        self._written = 0  # bytes on disk
        self._free, self._free_at = free_bytes(self._fd), 0
        self._waiters: list[asyncio.Future[None]] = []
        self._stopped: Stopped | None = None
        self._stop_audit: asyncio.Future[object] | None = None
        self._closed = False
        self._done: asyncio.Future[None] = self._loop.create_future()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def closed(self) -> bool:
        """Sealed by its relay (or being sealed): takes nothing more."""
        return self._closed

    @property
    def _recording(self) -> bool:
        return not self._closed and self._stopped is None

    # the format's part

    def _kick(self) -> None:
        raise NotImplementedError

    def _marker(self, text: str) -> None:
        """Queue the marker a stopped recording ends with."""
        raise NotImplementedError

    def _closing(self) -> None:
        """Just before ``close`` seals: queue what the format still holds."""

    def _stopping(self) -> None:
        """Just before a stop hands the rest to the writer."""

    def _drop_pending(self) -> None:
        self._pending.clear()

    def _next(self) -> None:
        """A job is done and the file goes on: hand over what is pending."""
        self._kick()

    # sealing

    def close(self) -> str:
        """Seal: the writer writes what is left, fsyncs and closes. Returns the
        hex SHA-256 the whole file will have; safe to call more than once."""
        if not self._closed:
            self._closing()
            self._closed = True
            self._kick()
            if self._done.done():  # sealed early: the session ends now, claim or drop
                self._keep_seal()
        return self._expected()

    async def sealed(self, seconds: float = SEAL_TIMEOUT) -> Seal:
        """The file as it is once the writer has finished (after ``close``); if
        the disk has not taken it in ``seconds``, what was queued, unsettled."""
        try:
            await asyncio.wait_for(asyncio.shield(self._done), seconds)
        except TimeoutError:
            log.error("recording %s: the disk has not taken its end in %.0f s", self.name, seconds)
            return Seal(self.name, self._expected(), self._queued, self._stopped, settled=False)
        if self._stop_audit is not None:  # its record goes before the end record
            await asyncio.wait([self._stop_audit], timeout=seconds)
        return Seal(self.name, self._digest.hexdigest(), self._written, self._stopped)

    def _expected(self) -> str:
        """The digest the file has once the writer has written all that is queued."""
        digest = self._digest.copy()
        for data in (*self._inflight, *self._pending):
            digest.update(data)
        return digest.hexdigest()

    # limits and stops

    def _over_limit(self, size: int) -> tuple[StopReason, str] | None:
        after = self._queued + size + MARKER_ROOM
        if after > self._limits.max_bytes:
            return "cap", f"the recording reached its cap of {self._limits.max_bytes} bytes"
        if self._free is not None:
            free = self._free - (after - self._free_at)
            if free < self._floor:
                return "low_space", f"under {self._floor} bytes would be left free on its disk"
        return None

    def _stop(self, reason: StopReason, detail: str) -> None:
        if reason != "write_error":
            self._marker(MARKERS[reason])
        self._stopped = Stopped(reason, self._queued, detail)
        self._audit_stop(self._stopped)
        self._stopping()
        self._kick()
        self._wake()

    def _audit_stop(self, stopped: Stopped) -> None:
        """Start auditing an early stop; the relay waits for it before going on."""
        log.warning("recording %s stopped (%s): %s", self.name, stopped.reason, stopped.detail)
        if self._on_stop is not None:
            self._stop_audit = asyncio.ensure_future(self._on_stop(stopped))
            self._stop_audit.add_done_callback(_report_audit_failure)

    # the hand-over to the writer

    def _batch(self) -> Batch | None:
        """What is pending, taken for the writer; None when it is busy or done."""
        last = not self._recording
        if self._job is not None or self._fd < 0 or not (self._pending or last):
            return None
        chunks, fd = self._pending, self._fd
        self._pending, self._inflight = [], chunks
        if last:
            self._fd = -1
        size = sum(len(c) for c in chunks)
        measure = last or self._written + size - self._free_at >= MEASURE_EVERY
        return Batch(fd, chunks, size, last, measure)

    def _submit(self, batch: Batch) -> asyncio.Future[WroteHashed]:
        """A writer thread writes and hashes ``batch`` into a copy of the digest and
        hands the copy back; the loop adopts it in ``_job_done``."""
        self._job = self._loop.run_in_executor(
            writers(),
            functools.partial(
                append_hashed,
                batch.fd,
                batch.chunks,
                self._written,
                self._digest,
                last=batch.last,
                measure=batch.measure,
            ),
        )
        return self._job

    def _job_done(self, job: asyncio.Future[WroteHashed]) -> None:
        self._job, self._inflight = None, []
        try:
            done = job.result()
            wrote, self._digest = done.wrote, done.digest
        except Exception as exc:  # a bug in the writer: stop recording, not the session
            log.exception("recording %s: the writer failed", self.name)
            wrote = Wrote(self._written, None, OSError(f"the writer failed: {exc}"))
        self._written = wrote.end
        if wrote.free is not None:
            self._free, self._free_at = wrote.free, wrote.end
        if wrote.error is not None and self._stopped is None:
            self._drop_pending()
            self._queued = self._written
            self._stop("write_error", wrote.error.strerror or str(wrote.error))
        if self._fd < 0 and self._job is None:
            self._sealed()
        else:
            self._next()
        self._wake()

    # who waits

    def _keep_seal(self) -> None:
        """A recording sealed before its session closed it stays claimable a while."""
        self._loop.call_later(SEAL_KEPT, forget, self)

    def _sealed(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
            # A recording stopped early (cap, space) is sealed while its session goes
            # on: it stays claimable until the session closes it (``close``).
            if self._closed:
                self._keep_seal()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _report_audit_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a stopped recording could not be audited: %s", task.exception())
