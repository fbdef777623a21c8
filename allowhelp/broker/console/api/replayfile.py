"""A recording served for replay from the one open file whose digest was checked.

Checking the file by its path and then serving it by its path again would serve
whatever is there by then (a file renamed over it, or rewritten). The file is opened
once (no symlink followed), hashed from that descriptor, and streamed from it; the
bytes are hashed again as they go out, and a stream whose bytes no longer match the
digest is cut before its end (the player gets an incomplete file, never a changed one
that looks whole).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK = 1 << 20


class RecordingChanged(Exception):
    """The file changed while it was served: the response is cut."""


class OpenRecording:
    """One recording file, open for reading from its checked descriptor."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode):
            self.close()
            raise FileNotFoundError(f"{path.name} is not a file")
        self.size = info.st_size

    def sha256(self) -> str:
        """The digest of the bytes this descriptor reads (blocking: run in a thread)."""
        digest, offset = hashlib.sha256(), 0
        while offset < self.size:
            block = os.pread(self.fd, BLOCK, offset)
            if not block:
                break
            digest.update(block)
            offset += len(block)
        return digest.hexdigest()

    async def stream(self, expected: str) -> AsyncIterator[bytes]:
        """The checked bytes, then the descriptor closed; cut if they no longer match."""
        digest = hashlib.sha256()
        try:
            offset = 0
            while offset < self.size:
                block = await asyncio.to_thread(os.pread, self.fd, BLOCK, offset)
                if not block:
                    break
                offset += len(block)
                digest.update(block)
                if offset >= self.size and digest.hexdigest() != expected:
                    log.error("a recording changed while it was replayed: cut before its end")
                    raise RecordingChanged("the recording changed while it was served")
                yield block
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
