"""Shell recordings as asciicast v2 files, with the SHA-256 that the audit log keeps.

Output only by default: typed input can hold passwords. The digest is
computed over the bytes as written, so the audit record proves the file played
back later is the one recorded.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO


class AsciicastRecorder:
    def __init__(self, folder: Path, session_id: str, cols: int, rows: int, *, title: str) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{session_id}.cast"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._start = time.monotonic()
        # Split UTF-8 sequences arrive in two chunks; decode incrementally.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._closed = False
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        }
        self._line(header)

    def _line(self, value: object) -> None:
        self._write(json.dumps(value, ensure_ascii=False))

    def _event(self, code: str, text: str) -> None:
        # What json.dumps([t, code, text], ensure_ascii=False) writes, without
        # building an encoder per event: this runs for every keystroke's echo.
        self._write(f'[{self._elapsed()!r}, "{code}", {encode_basestring(text)}]')

    def _write(self, line: str) -> None:
        data = line.encode() + b"\n"
        self._file.write(data)
        self._hash.update(data)

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._start, 6)

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text and not self._closed:
            self._event("o", text)

    def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            self._event("r", f"{cols}x{rows}")

    def close(self) -> str:
        """Flush to disk and return the hex SHA-256 of the whole file."""
        if not self._closed:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                self._event("o", rest)
            self._closed = True
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self._hash.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
