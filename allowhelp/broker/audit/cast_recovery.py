"""The recording a killed broker left behind: made valid, hashed, described.

The recorder writes whole lines and the relay shows a frame only once its line
is in the file, so after a ``kill -9`` the file holds at least what the
technician saw. Only its last line may be torn (a write cut short): that
partial line, never shown to anyone, is cut so that every asciicast player
reads the file, and the end record says how many bytes went.

Blocking file work: run :func:`recover_recording` in a thread.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO

from allowhelp.broker.audit.recording import MARKERS, StopReason

BLOCK = 1 << 20
TAIL = 4096  # a marker line is far shorter


@dataclass(frozen=True)
class Recovered:
    name: str
    sha256: str
    size: int
    torn_bytes: int
    stopped: StopReason | None

    def details(self) -> dict[str, object]:
        """What the session's end record says about its recording."""
        out: dict[str, object] = {"recording_recovered": True, "recording_bytes": self.size}
        if self.torn_bytes:
            out["recording_torn_bytes"] = self.torn_bytes
        if self.stopped is not None:
            out |= {"recording_truncated": True, "recording_stopped": self.stopped}
        return out


def recover_recording(folder: Path, session_id: str) -> Recovered | None:
    """Cut a torn last line off ``session_id``'s recording, fsync, and hash it
    (None when there is no such file)."""
    path = folder / f"{session_id}.cast"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "r+b") as handle:
        size = os.fstat(fd).st_size
        keep = _complete_lines(handle, size)
        if keep < size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(fd)
        return Recovered(path.name, _sha256(handle, keep), keep, size - keep, _marker(handle, keep))


def _complete_lines(handle: IO[bytes], size: int) -> int:
    """The length of the file up to and with its last newline."""
    end = size
    while end > 0:
        start = max(0, end - BLOCK)
        handle.seek(start)
        at = handle.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _sha256(handle: IO[bytes], size: int) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    left = size
    while left and (block := handle.read(min(BLOCK, left))):
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


def _marker(handle: IO[bytes], size: int) -> StopReason | None:
    """Why the recording had stopped, if its last line is the recorder's marker."""
    handle.seek(max(0, size - TAIL))
    tail = handle.read(min(TAIL, size))
    for reason, text in MARKERS.items():
        if tail.endswith(f', "m", {encode_basestring(text)}]\n'.encode()):
            return reason
    return None
