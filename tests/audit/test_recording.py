"""The asciicast recorder writes what a JSON encoder would, off the event loop,
and its digest covers exactly the file on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from allowhelp.broker.audit import recording
from allowhelp.broker.audit.recording import AsciicastRecorder, file_sha256, settle

HOSTILE = [
    'quote " and backslash \\ and slash /',
    "controls \x00\x01\x07\x1b[31m\x7f tab\t cr\r lf\n",
    "line separators \u2028 \u2029 and emoji \U0001f600 é",
    "",
]


async def test_events_are_the_json_any_player_reads(tmp_path: Path) -> None:
    recorder = AsciicastRecorder(tmp_path, "s1", 80, 24, title="t")
    for text in HOSTILE:
        recorder.output(text.encode())
    recorder.output("split é".encode()[:-1])  # half a UTF-8 sequence waits for the rest
    recorder.output("é".encode()[-1:])
    recorder.resize(100, 30)
    digest = recorder.close()
    seal = await recorder.sealed()

    lines = recorder.path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    events = [json.loads(line) for line in lines[1:]]
    texts = [text for text in HOSTILE if text]
    assert [e[2] for e in events if e[1] == "o"] == [*texts, "split ", "é"]
    assert events[-1][1:] == ["r", "100x30"]
    times = [e[0] for e in events]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    for line, event in zip(lines[1:], events, strict=True):
        assert line == json.dumps(event, ensure_ascii=False).encode()
    assert digest == seal.sha256 == file_sha256(recorder.path)
    assert digest == hashlib.sha256(recorder.path.read_bytes()).hexdigest()
    assert seal.size == recorder.path.stat().st_size and seal.stopped is None


async def test_nothing_is_written_after_close(tmp_path: Path) -> None:
    recorder = AsciicastRecorder(tmp_path, "s2", 80, 24, title="t")
    digest = recorder.close()
    recorder.output(b"late")
    recorder.resize(10, 10)
    await recorder.sealed()
    assert recorder.close() == digest == file_sha256(recorder.path)
    assert len(recorder.path.read_bytes().splitlines()) == 1


async def test_flushed_means_in_the_file(tmp_path: Path) -> None:
    """What the relay shows after ``flushed`` is already on disk (a kill -9 keeps it)."""
    recorder = AsciicastRecorder(tmp_path, "s3", 80, 24, title="t")
    for n in range(50):
        recorder.output(f"line {n}\r\n".encode())
        await recorder.flushed()
        lines = recorder.path.read_bytes().splitlines()
        assert json.loads(lines[-1])[2] == f"line {n}\r\n"
    recorder.close()
    await recorder.sealed()


async def test_writes_and_fsync_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that takes 0.3 s per write stalls neither the loop nor the digest."""
    loop_thread = threading.get_ident()
    writers: set[int] = set()
    real_pwrite, real_pwritev, real_fsync = os.pwrite, os.pwritev, os.fsync

    def slow_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        writers.add(threading.get_ident())
        time.sleep(0.3)
        return real_pwrite(fd, data, offset)

    def slow_pwritev(fd: int, buffers: Sequence[bytes], offset: int) -> int:
        writers.add(threading.get_ident())
        time.sleep(0.3)
        return real_pwritev(fd, buffers, offset)

    def slow_fsync(fd: int) -> None:
        writers.add(threading.get_ident())
        time.sleep(0.3)
        real_fsync(fd)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    monkeypatch.setattr(os, "pwritev", slow_pwritev)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    recorder = AsciicastRecorder(tmp_path, "s4", 80, 24, title="t")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    recorder.output(b"x" * 100_000)
    recorder.resize(90, 30)
    digest = recorder.close()  # returns at once: the writer has the tail
    assert time.monotonic() - started < 0.1
    seal = await recorder.sealed()
    ticking.cancel()
    assert ticks >= 20  # the loop ran all along (about 0.9 s of slow disk)
    assert writers and loop_thread not in writers
    assert seal.sha256 == digest == file_sha256(recorder.path)


async def test_the_registry_settles_each_recording_once(tmp_path: Path) -> None:
    recorder = AsciicastRecorder(tmp_path, "s5", 80, 24, title="t")
    recorder.output(b"hello")
    digest = recorder.close()
    seal = await settle(recorder.name)
    assert seal is not None and seal.sha256 == digest == file_sha256(recorder.path)
    assert seal.details() == {"recording_bytes": recorder.path.stat().st_size}
    assert await settle(recorder.name) is None  # claimed; a restarted broker has none either


async def test_small_writes_go_on_the_loop_while_the_disk_is_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An echo is written by the loop (no thread hand-over before it is shown) once a
    small write has been fast; one slow write sends the next ones back to a thread."""
    loop_thread = threading.get_ident()
    writers: list[int] = []
    delay = [0.0]
    real_pwrite, real_pwritev = os.pwrite, os.pwritev

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        writers.append(threading.get_ident())
        time.sleep(delay[0])
        return real_pwrite(fd, data, offset)

    def pwritev(fd: int, buffers: Sequence[bytes], offset: int) -> int:  # the writer thread's
        writers.append(threading.get_ident())
        time.sleep(delay[0])
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(recording, "FAST_WRITE", 0.05)  # a loaded test machine is slow
    recorder = AsciicastRecorder(tmp_path, "s9", 80, 24, title="t")
    await recorder.flushed()
    assert writers[-1] != loop_thread  # the header: nothing proved about the disk yet
    recorder.output(b"k")
    await recorder.flushed()
    assert writers[-1] == loop_thread  # fast disk: the echo went on the loop
    delay[0] = 0.1
    recorder.output(b"l")
    await recorder.flushed()
    assert writers[-1] == loop_thread  # this one was slow ...
    recorder.output(b"m")
    await recorder.flushed()
    assert writers[-1] != loop_thread  # ... so the next one is a thread's again
    delay[0] = 0.0
    recorder.output(b"x" * (recording.INLINE_WRITE + 1))
    await recorder.flushed()
    assert writers[-1] != loop_thread  # bulk output always goes to a thread
    digest = recorder.close()
    seal = await recorder.sealed()
    assert seal.sha256 == digest == file_sha256(recorder.path)
    assert recorder.path.read_bytes().count(b'"o"') == 4
