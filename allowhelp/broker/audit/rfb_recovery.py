"""The screen recording a killed broker left behind: its torn last frame cut, hashed.

The recorder writes whole frames in batches, so after a ``kill -9`` the file
is its header and whole frames, except perhaps a last frame cut short (a
write cut by the kill): that frame is cut so that the player reads the file,
and the end record says how many bytes went. A file whose header is itself
torn (killed in the first moment) is kept as it is and said to be unreadable.

Blocking file work: run :func:`recover_any` in a thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from allowhelp.broker.audit.cast_recovery import BLOCK, Recovered, recover_recording
from allowhelp.broker.audit.recording import MARKERS, StopReason
from allowhelp.broker.audit.rfb_format import MARKER, SUFFIX, BadRecording, frames, read_header


def recover_any(folder: Path, session_id: str) -> Recovered | None:
    """The session's recording, shell or screen, made whole and hashed (None: no file)."""
    found = recover_recording(folder, session_id)
    return found if found is not None else recover_screen(folder, session_id)


def recover_screen(folder: Path, session_id: str) -> Recovered | None:
    path = folder / f"{session_id}{SUFFIX}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "r+b") as handle:
        size = os.fstat(fd).st_size
        keep, stopped = size, None
        try:
            _, start = read_header(handle)
            keep = start
            for end, frame in frames(handle, start):
                keep = end
                stopped = _reason(frame.payload) if frame.kind == MARKER else None
        except BadRecording:  # not a torn end: kept whole, hashed as it is
            keep, stopped = size, None
        if keep < size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(fd)
        digest = hashlib.sha256()
        handle.seek(0)
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
        return Recovered(path.name, digest.hexdigest(), keep, size - keep, stopped)


def _reason(text: bytes) -> StopReason | None:
    for reason, marker in MARKERS.items():
        if text == marker.encode():
            return reason
    return None
