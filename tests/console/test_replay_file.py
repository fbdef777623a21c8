"""A replay serves the very file whose digest it checked (``console/api/replayfile.py``):
a file renamed over it after the check is not what is served, and a file rewritten in
place while it is served is cut before its end, never passed off as whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from allowhelp.broker.console.api.replayfile import BLOCK, OpenRecording, RecordingChanged


async def served(opened: OpenRecording, expected: str) -> bytes:
    return b"".join([block async for block in opened.stream(expected)])


async def test_a_file_renamed_over_the_checked_one_is_not_served(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_bytes(b"recorded\n" * 1000)
    opened = OpenRecording(path)
    digest = opened.sha256()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "forged").write_bytes(b"forged\n" * 1000)
    os.replace(tmp_path / "forged", path)  # after the check, before the send
    assert await served(opened, digest) == b"recorded\n" * 1000
    assert opened.fd == -1  # closed once served


async def test_a_file_rewritten_while_it_is_served_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "s.rfb"
    path.write_bytes(b"a" * (3 * BLOCK))
    opened = OpenRecording(path)
    digest = opened.sha256()
    with path.open("r+b") as handle:  # the same file, changed in place
        handle.seek(2 * BLOCK)
        handle.write(b"b" * BLOCK)
    got = b""
    with pytest.raises(RecordingChanged):
        async for block in opened.stream(digest):
            got += block
    assert len(got) < 3 * BLOCK  # the last block never went out
    assert opened.fd == -1


def test_a_folder_or_a_link_is_not_a_recording(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("folder", "link"):
        with pytest.raises(OSError):
            OpenRecording(tmp_path / name)
