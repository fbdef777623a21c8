"""The screen recorder's writer: the digest it hands back always covers exactly the
bytes the file keeps, so a recording's seal matches its file whatever failed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from allowhelp.broker.audit.rfb_writer import append_hashed


def test_a_failed_fsync_keeps_the_bytes_and_their_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last job's fsync fails after the bytes were written: they stay in the file
    (its end counts them), so the digest must count them too, or an intact file is
    refused at replay."""
    path = tmp_path / "rec"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def failing_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    chunks = [b"first frame ", b"second frame"]
    done = append_hashed(fd, chunks, 0, hashlib.sha256(), last=True, measure=False)
    assert done.wrote.error is not None  # the failure is said
    kept = path.read_bytes()
    assert done.wrote.end == len(kept) == len(b"".join(chunks))
    assert done.digest.hexdigest() == hashlib.sha256(kept).hexdigest()


def test_a_failed_write_is_cut_back_with_the_digest_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rec"
    path.write_bytes(b"kept")
    fd = os.open(path, os.O_RDWR)
    before = hashlib.sha256(b"kept")

    def failing_pwritev(_fd: int, _buffers: object, _offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwritev", failing_pwritev)
    done = append_hashed(fd, [b"lost"], 4, before.copy(), last=True, measure=False)
    assert done.wrote.error is not None
    assert path.read_bytes() == b"kept" and done.wrote.end == 4
    assert done.digest.hexdigest() == before.hexdigest()


def test_small_and_large_pieces_are_hashed_as_written_in_their_order(tmp_path: Path) -> None:
    """A shell job's pieces (three per line) and a screen's large frames: the digest is
    that of the bytes as written, in their order."""
    big = bytes(range(256)) * 4096
    chunks = [b"[0.1, ", b'"o", ', b'"a"]\n', big, b"tail", big + b"!", b"x" * 3000, b"y"]
    path = tmp_path / "rec"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    done = append_hashed(fd, chunks, 0, hashlib.sha256(b"head"), last=True, measure=False)
    assert done.wrote.error is None
    assert path.read_bytes() == b"".join(chunks)
    assert done.digest.hexdigest() == hashlib.sha256(b"head" + b"".join(chunks)).hexdigest()
