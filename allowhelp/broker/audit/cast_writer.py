"""The recorder's writer side: plain blocking file calls, run in a small pool of threads.

One job at a time per recording (the recorder waits for a job before it
starts the next), so the thread may own the file descriptor while the job
runs. The recorder hashes on the loop: a job's thread should need the GIL as
rarely as possible, since under a flood it waits for the busy loop to let go.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

WRITERS = 8


@dataclass(frozen=True)
class Wrote:
    end: int  # the file's size after the job
    free: int | None  # free bytes on its filesystem then
    error: OSError | None = None
    seconds: float = 0.0  # spent in pwrite


def append(fd: int, data: bytes, start: int, *, last: bool, measure: bool) -> Wrote:
    """Write ``data`` at ``start``; on a failure cut the file back to ``start``
    (whole lines only). ``measure``: read the free space after; ``last``: then
    fsync and close."""
    error: OSError | None = None
    end = start
    began = time.perf_counter()
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, end)
            view, end = view[written:], end + written
    except OSError as exc:
        error, end = exc, start
    seconds = time.perf_counter() - began
    return finish_job(fd, start, end, error, last=last, measure=measure, seconds=seconds)


def finish_job(
    fd: int,
    start: int,
    end: int,
    error: OSError | None,
    *,
    last: bool,
    measure: bool,
    seconds: float = 0.0,
) -> Wrote:
    """The end of a writer job, shell's or screen's: on a failure cut the file back to
    ``start``; read the free space if asked (or failed); on the ``last`` job fsync and
    close."""
    if error is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
    free = free_bytes(fd) if measure or error else None
    if last:
        try:
            os.fsync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    return Wrote(end, free, error, seconds)


def free_bytes(fd: int) -> int | None:
    """Free bytes (for an unprivileged user) on the filesystem of ``fd``."""
    try:
        st = os.fstatvfs(fd)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


_pool: ThreadPoolExecutor | None = None


def writers() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one pool per process, made on first use
    if _pool is None:
        _pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="allowhelp-recording")
    return _pool
