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

Limits, stops and the seal are the file's (``recording_file.py``, shared with
the screen's recorder): when the recording stops early, the shell goes on, but
until that stop's audit is committed :meth:`~AsciicastRecorder.flushed` does
not return, and if it fails ``flushed`` raises: unrecorded output is never
shown unaudited. This module also keeps the names the rest of the broker
imports from it (``settle``, ``sealed_traffic``, ``RecordingLimits``, ...).

A broker killed mid-shell leaves a file whose last line may be torn:
:mod:`allowhelp.broker.audit.cast_recovery` cuts it and hashes the rest.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import orjson

from allowhelp.broker.audit.cast_writer import append
from allowhelp.broker.audit.recording_file import (
    MARKERS,
    MEASURE_EVERY,
    SEAL_TIMEOUT,
    RecordingFile,
    RecordingLimits,
    Seal,
    Sealable,
    StopHook,
    Stopped,
    StopReason,
    forget,
    is_open,
    open_recording,
    register,
    settle,
)
from allowhelp.broker.audit.rfb_writer import WroteHashed
from allowhelp.broker.model.session import Traffic

__all__ = [
    "MARKERS",
    "MEASURE_EVERY",
    "SEAL_TIMEOUT",
    "AsciicastRecorder",
    "RecordingFile",
    "RecordingLimits",
    "Seal",
    "Sealable",
    "StopHook",
    "StopReason",
    "Stopped",
    "file_sha256",
    "forget",
    "is_open",
    "open_recording",
    "register",
    "sealed_traffic",
    "settle",
]

INLINE_WRITE = 4096  # jobs up to this size are written on the loop, not by a writer thread
FAST_WRITE = 0.0005  # ... while the last such job's pwrite took less than this (seconds)


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
        self._inline = False  # small jobs go to the loop (the disk proved fast)
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

    @property
    def on_disk(self) -> bool:
        """Everything accepted so far is in the file and no stop is being audited:
        ``flushed`` would return at once (the relay's check before awaiting it)."""
        return self._written >= self._queued and self._stop_audit is None

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

    def _closing(self) -> None:
        rest = self._decoder.decode(b"", final=True)
        if rest and self._recording:
            self._event("o", rest)

    def _event(self, code: str, text: str) -> None:
        line = self._line(code, text)
        size = len(line[0]) + len(line[1]) + len(line[2])
        over = self._over_limit(size)
        if over is None:
            self._queue_line(line, size)
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

    def _marker(self, text: str) -> None:
        self._queue(*self._line("m", text))

    # the hand-over to the writer

    def _queue(self, *pieces: bytes) -> None:
        self._queue_line(pieces, sum(map(len, pieces)))

    def _queue_line(self, pieces: tuple[bytes, ...], size: int) -> None:
        self._queued += size
        if (
            self._inline
            and self._job is None
            and not self._pending
            and size <= INLINE_WRITE
            and self._fd >= 0
            and self._recording
            and self._written + size - self._free_at < MEASURE_EVERY
        ):  # a keystroke's echo, nothing else waiting: straight to the file (``_kick``'s rules)
            self._write_inline(self._fd, b"".join(pieces))
            return
        self._pending.extend(pieces)
        self._kick()

    def _kick(self) -> None:
        """Give the writer what is pending, unless it is busy or done."""
        batch = self._batch()
        if batch is None:
            return
        small = batch.size <= INLINE_WRITE
        if small and self._inline and not batch.last and not batch.measure:
            self._write_inline(batch.fd, b"".join(batch.chunks))
            return
        job = self._submit(batch)
        if small:
            job.add_done_callback(self._timed)
        job.add_done_callback(self._job_done)

    def _write_inline(self, fd: int, data: bytes) -> None:
        """A keystroke's echo: one pwrite into the page cache costs microseconds, a
        round trip through a writer thread (and its wake-up of the loop) far more,
        and the relay waits for it before it shows the echo."""
        start = self._written
        began = time.perf_counter()
        try:
            whole = os.pwrite(fd, data, start) == len(data)
        except OSError:
            whole = False
        if whole:  # the usual case, without a job's bookkeeping: the digest is of what is on disk
            self._inline = time.perf_counter() - began < FAST_WRITE
            self._digest.update(data)
            self._written = start + len(data)
            self._inflight = []  # on disk and in the digest: no job holds them
            if self._waiters:
                self._wake()
            return
        # short or failed: ``append`` writes it again from ``start`` and cuts the file back
        # to ``start`` if that fails too; the job's bookkeeping stops the recording then
        wrote = append(fd, data, start, last=False, measure=False)
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
