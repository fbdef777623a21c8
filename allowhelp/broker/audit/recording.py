"""Shell recordings as asciicast v2 files, with the SHA-256 that the audit log keeps.

Output only: typed input can hold passwords. The digest is over the bytes on
disk, so the audit record proves the file played back later is the one recorded.

Nothing here blocks the event loop for long. The loop formats each event into
a line (the text JSON-escaped by ``orjson``, which writes exactly what
``json.dumps(text, ensure_ascii=False)`` does, 2-10x faster on most terminal output;
tests/audit/test_recording_bytes.py holds it to that); a writer thread
(``rfb_writer.append_hashed``: one job in flight per recording, from a small
shared pool) hashes the job's lines and appends them with one ``pwritev``,
unjoined, and, at the end, fsyncs and closes. Hashing there, not on the loop,
moves it onto the other core: ``hashlib`` lets go of the GIL on large buffers.
A small job (``INLINE_WRITE``: a keystroke's echo, a prompt) is written and
hashed by the loop itself while the disk has shown it is fast (the last small
write took under ``FAST_WRITE``): one ``pwrite`` into the page cache costs less
than the hand-over to a thread and back, which the echo would wait for. One
slow write sends the recording back to the thread. The loop adopts a job's
digest only once the job has written its bytes: the digest is always of
exactly what is on disk.
The relay awaits ``flushed()`` before it shows a frame to the technician, so
what the technician saw is already in the file (the kernel's page cache
survives a ``kill -9`` of the broker), and a disk slower than the shell slows
the shell instead of filling memory.

Limits (:class:`RecordingLimits`): a per-recording cap and a free-space floor.
When one is hit, or a write fails, the recording stops for good (a marker
event says why, except after a write error), ``on_stop`` is called (the
session layer audits ``recording.stopped``) and the shell goes on. Until that
audit is committed :meth:`~AsciicastRecorder.flushed` does not return, and if
it fails ``flushed`` raises: unrecorded output is never shown unaudited.

Sealing: :meth:`~AsciicastRecorder.close` is synchronous (the relay's stop
path) and returns the digest of everything queued; :func:`settle` awaits the
writer and gives the digest of what is on disk, which the session registry
puts into the end record.

A broker killed mid-shell leaves a file whose last line may be torn:
:mod:`allowhelp.broker.audit.cast_recovery` cuts it and hashes the rest.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import orjson

from allowhelp.broker.audit.cast_writer import Wrote, append, free_bytes, writers
from allowhelp.broker.audit.rfb_writer import WroteHashed, append_hashed
from allowhelp.broker.model.session import Traffic

log = logging.getLogger(__name__)

StopReason = Literal["cap", "low_space", "write_error"]
# The text of the marker event a stopped recording ends with (asciinema shows markers).
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
INLINE_WRITE = 4096  # jobs up to this size are written on the loop, not by a writer thread
FAST_WRITE = 0.0005  # ... while the last such job's pwrite took less than this (seconds)


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


class RecordingFile:
    """What the shell's and the screen's recorders share: the file (created, never
    reused, 0600), its limits, the stop's audit, who waits on the writer, the seal."""

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

    def _over_limit(self, size: int) -> tuple[StopReason, str] | None:
        after = self._queued + size + MARKER_ROOM
        if after > self._limits.max_bytes:
            return "cap", f"the recording reached its cap of {self._limits.max_bytes} bytes"
        if self._free is not None:
            free = self._free - (after - self._free_at)
            if free < self._floor:
                return "low_space", f"under {self._floor} bytes would be left free on its disk"
        return None

    def _audit_stop(self, stopped: Stopped) -> None:
        """Start auditing an early stop; the relay waits for it before going on."""
        log.warning("recording %s stopped (%s): %s", self.name, stopped.reason, stopped.detail)
        if self._on_stop is not None:
            self._stop_audit = asyncio.ensure_future(self._on_stop(stopped))
            self._stop_audit.add_done_callback(_report_audit_failure)

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


class AsciicastRecorder(RecordingFile):
    def __init__(
        self,
        folder: Path,
        session_id: str,
        cols: int,
        rows: int,
        *,
        title: str,
        limits: RecordingLimits | None = None,
        on_stop: StopHook | None = None,
    ) -> None:
        super().__init__(folder / f"{session_id}.cast", limits, on_stop)
        # Split UTF-8 sequences arrive in two chunks; decode incrementally.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._inflight: list[bytes] = []  # the running job's lines (``_expected``)
        self._inline = False  # small jobs go to the loop (the disk proved fast)
        self._job: asyncio.Future[WroteHashed] | None = None
        register(self)
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        }
        self._queue(json.dumps(header, ensure_ascii=False).encode(), b"\n")

    # the relay's side (the event loop)

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text and self._recording:
            self._event("o", text)

    def resize(self, cols: int, rows: int) -> None:
        if self._recording:
            self._event("r", f"{cols}x{rows}")

    async def flushed(self) -> None:
        """Return once everything accepted so far is in the file (or never will
        be: the recording stopped, and that is audited); raise what auditing
        the stop raised."""
        target = self._queued
        while self._written < target and not self._done.done():
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        if self._stop_audit is not None:
            await asyncio.shield(self._stop_audit)

    def close(self) -> str:
        """Seal: the writer writes what is left, fsyncs and closes. Returns the
        hex SHA-256 the whole file will have; safe to call more than once."""
        if not self._closed:
            rest = self._decoder.decode(b"", final=True)
            if rest and self._recording:
                self._event("o", rest)
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

    def _event(self, code: str, text: str) -> None:
        line = self._line(code, text)
        over = self._over_limit(sum(map(len, line)))
        if over is None:
            self._queue(*line)
            return
        if code == "o":
            self._last_words(text)
        self._stop(*over)

    def _line(self, code: str, text: str) -> tuple[bytes, bytes, bytes]:
        """What ``json.dumps([t, code, text], ensure_ascii=False)`` writes, and a
        newline, in three pieces: the text's escaped bytes are not copied again."""
        return f'[{self._elapsed()!r}, "{code}", '.encode(), orjson.dumps(text), b"]\n"

    def _last_words(self, text: str) -> None:
        """Record as much of ``text`` as still fits under the limits (once per recording)."""
        fits, over = 0, len(text)
        while fits + 1 < over:
            middle = (fits + over) // 2
            if self._over_limit(sum(map(len, self._line("o", text[:middle])))) is None:
                fits = middle
            else:
                over = middle
        if fits:
            self._queue(*self._line("o", text[:fits]))

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._start, 6)

    def _stop(self, reason: StopReason, detail: str) -> None:
        if reason != "write_error":
            self._queue(*self._line("m", MARKERS[reason]))
        self._stopped = Stopped(reason, self._queued, detail)
        self._audit_stop(self._stopped)
        self._kick()
        self._wake()

    # the hand-over to the writer

    def _queue(self, *pieces: bytes) -> None:
        self._pending.extend(pieces)
        self._queued += sum(map(len, pieces))
        self._kick()

    def _kick(self) -> None:
        """Give the writer what is pending, unless it is busy or done."""
        last = not self._recording
        if self._job is not None or self._fd < 0 or not (self._pending or last):
            return
        chunks, fd = self._pending, self._fd
        self._pending, self._inflight = [], chunks
        if last:
            self._fd = -1
        size = sum(map(len, chunks))
        measure = last or self._written + size - self._free_at >= MEASURE_EVERY
        small = size <= INLINE_WRITE
        if small and self._inline and not last and not measure:
            self._write_inline(fd, b"".join(chunks))
            return
        # The thread hashes what it wrote into a copy of the digest and hands the
        # copy back; the loop adopts it in ``_job_done``.
        self._job = self._loop.run_in_executor(
            writers(),
            functools.partial(
                append_hashed, fd, chunks, self._written, self._digest, last=last, measure=measure
            ),
        )
        if small:
            self._job.add_done_callback(self._timed)
        self._job.add_done_callback(self._job_done)

    def _write_inline(self, fd: int, data: bytes) -> None:
        """A keystroke's echo: one pwrite into the page cache costs microseconds, a
        round trip through a writer thread (and its wake-up of the loop) far more,
        and the relay waits for it before it shows the echo."""
        wrote = append(fd, data, self._written, last=False, measure=False)
        self._inline = wrote.error is None and wrote.seconds < FAST_WRITE
        digest = self._digest
        if wrote.error is None:
            digest = digest.copy()
            digest.update(data)
        done: asyncio.Future[WroteHashed] = self._loop.create_future()
        done.set_result(WroteHashed(wrote, digest))
        self._job = done
        self._job_done(done)

    def _timed(self, job: asyncio.Future[WroteHashed]) -> None:
        """A small job on the writer thread: was the disk fast enough to write on the loop?"""
        if not job.cancelled() and job.exception() is None:
            self._inline = job.result().wrote.seconds < FAST_WRITE

    def _job_done(self, job: asyncio.Future[WroteHashed]) -> None:
        self._job, self._inflight = None, []
        try:
            done = job.result()
            wrote, self._digest = done.wrote, done.digest
        except Exception as exc:  # a bug in the writer: stop recording, not the shell
            log.exception("recording %s: the writer failed", self.name)
            wrote = Wrote(self._written, None, OSError(f"the writer failed: {exc}"))
        self._written = wrote.end
        if wrote.free is not None:
            self._free, self._free_at = wrote.free, wrote.end
        if wrote.error is not None and self._stopped is None:
            self._pending.clear()
            self._queued = self._written
            self._stop("write_error", wrote.error.strerror or str(wrote.error))
        if self._fd < 0 and self._job is None:
            self._sealed()
        else:
            self._kick()
        self._wake()

    def _expected(self) -> str:
        """The digest the file has once the writer has written all that is queued."""
        digest = self._digest.copy()
        for data in (*self._inflight, *self._pending):
            digest.update(data)
        return digest.hexdigest()


def _report_audit_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a stopped recording could not be audited: %s", task.exception())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def sealed_traffic(traffic: Traffic) -> tuple[Traffic, dict[str, object]]:
    """``traffic`` with its recording's digest as the file is on disk once the
    writer has finished (the registry awaits this before the end record), and
    what the end record says about the recording (its size; stopped early)."""
    seal = await settle(traffic.recording) if traffic.recording else None
    if seal is None:
        return traffic, {}
    return replace(traffic, recording_sha256=seal.sha256), seal.details()
