"""The screen recorder's writer side: one batch per job, hashed and written in a thread.

Unlike the shell's writer (``cast_writer.py``), the thread also hashes: a
screen moves megabytes a second and ``hashlib`` lets go of the GIL on large
buffers, so the event loop pays only for framing. The job copies the digest it
is given and returns the copy: the loop's digest stays the file's until the
job says its bytes are on disk. The chunks go out with ``pwritev``, not joined.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from allowhelp.broker.audit.cast_writer import Wrote, finish_job

IOV_MAX = 1024  # at most this many buffers per pwritev call (Linux allows 1024)


@dataclass(frozen=True)
class WroteHashed:
    wrote: Wrote
    digest: hashlib._Hash  # the digest given, updated with what was written


def append_hashed(
    fd: int,
    chunks: Sequence[bytes],
    start: int,
    digest: hashlib._Hash,
    *,
    last: bool,
    measure: bool,
) -> WroteHashed:
    """Write ``chunks`` at ``start`` and hash them into a copy of ``digest``; on a
    failure cut the file back to ``start`` (whole frames only). ``measure``: read
    the free space after; ``last``: then fsync and close."""
    error: OSError | None = None
    end = start
    after = digest.copy()
    began = time.perf_counter()
    try:
        end = _write_all(fd, chunks, start)
    except OSError as exc:
        error, end = exc, start
    seconds = time.perf_counter() - began  # the writing alone (the shell's inline rule)
    if error is None:
        for chunk in chunks:
            after.update(chunk)
    wrote = finish_job(fd, start, end, error, last=last, measure=measure, seconds=seconds)
    # the digest follows the bytes kept: a failed write is cut back (the old digest),
    # a failed fsync keeps them (``wrote.end`` counts them, so must the digest)
    return WroteHashed(wrote, digest if error else after)


def _write_all(fd: int, chunks: Sequence[bytes], start: int) -> int:
    end = start
    for first in range(0, len(chunks), IOV_MAX):
        group = chunks[first : first + IOV_MAX]
        size = sum(len(c) for c in group)
        written = os.pwritev(fd, group, end)
        if written < size:  # a short write: the rest one buffer at a time
            view = memoryview(b"".join(group))[written:]
            end += written
            while view:
                more = os.pwrite(fd, view, end)
                view, end = view[more:], end + more
        else:
            end += written
    return end
