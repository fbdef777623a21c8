"""The screen recorder: its file format, its digest, its limits, its recovery and
retention, on real files (with a real broker: tests/sessions/test_screen_recording.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from allowhelp.broker.audit import recording_file
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.recording import (
    MARKERS,
    AsciicastRecorder,
    RecordingLimits,
    Stopped,
    is_open,
    settle,
)
from allowhelp.broker.audit.retention import sweep
from allowhelp.broker.audit.rfb_format import (
    CLIENT,
    MAGIC,
    MARKER,
    SERVER,
    BadRecording,
    Frame,
    frames,
    read_header,
)
from allowhelp.broker.audit.rfb_recording import BATCH, RfbRecorder
from allowhelp.broker.audit.rfb_recovery import recover_any, recover_screen
from allowhelp.broker.errors import AuditUnavailable
from allowhelp.broker.settings import parse_keep

META: dict[str, object] = {"session": "s", "hostname": "pc", "technician": "tina"}


def parsed(path: Path) -> tuple[dict[str, object], list[Frame]]:
    with path.open("rb") as handle:
        meta, start = read_header(handle)
        return meta, [frame for _, frame in frames(handle, start)]


class Hook:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[Stopped] = []
        self.fail = fail

    async def __call__(self, stopped: Stopped) -> None:
        self.calls.append(stopped)
        if self.fail:
            raise RuntimeError("audit down")


async def test_frames_in_order_with_sender_and_the_digest_of_the_file(tmp_path: Path) -> None:
    recorder = RfbRecorder(tmp_path, "s1", META)
    recorder.server(b"RFB 003.008\n")
    recorder.client(b"RFB 003.008\n", "tina")
    recorder.server(b"")  # nothing: no frame
    big = os.urandom(3 * BATCH)  # more than one batch for the writer
    recorder.server(big)
    recorder.client(b"\x04\x01\0\0\0\0\0\x61", "é" * 200)  # a name cut to 255 bytes
    digest = recorder.close()
    recorder.server(b"after the close")  # never written
    seal = await settle(recorder.name)
    assert seal is not None and seal.stopped is None and seal.settled

    data = recorder.path.read_bytes()
    assert data.startswith(MAGIC) and recorder.name == "s1.rfb"
    assert digest == seal.sha256 == hashlib.sha256(data).hexdigest() and seal.size == len(data)
    meta, found = parsed(recorder.path)
    assert {**meta, "started": 0} == {**META, "started": 0}
    assert isinstance(meta["started"], float) and abs(meta["started"] - time.time()) < 60
    assert [f.kind for f in found] == [SERVER, CLIENT, SERVER, CLIENT]
    assert [f.rfb for f in found] == [
        b"RFB 003.008\n",
        b"RFB 003.008\n",
        big,
        b"\x04\x01\0\0\0\0\0\x61",
    ]
    assert found[1].sender == "tina" and found[3].sender == "é" * 127
    times = [f.millis for f in found]
    assert times == sorted(times)
    assert oct(recorder.path.stat().st_mode & 0o777) == "0o600"


async def test_the_relay_is_not_held_up_by_the_disk(tmp_path: Path) -> None:
    """Framing returns at once; the writer catches up in the background, in batches."""
    recorder = RfbRecorder(tmp_path, "s2", META)
    chunk = b"x" * 4096
    for _ in range(100):
        recorder.server(chunk)
        assert not recorder.must_wait
    assert recorder.path.stat().st_size < 100 * 4096  # not written synchronously
    await recorder.keep_up()
    recorder.close()
    seal = await recorder.sealed()
    assert seal.size == recorder.path.stat().st_size > 100 * 4096


async def test_the_cap_stops_the_recording_with_a_marker_and_waits_for_its_audit(
    tmp_path: Path,
) -> None:
    hook = Hook()
    recorder = RfbRecorder(
        tmp_path, "cap", META, limits=RecordingLimits(max_bytes=8192, min_free=0), on_stop=hook
    )
    for _ in range(10):
        recorder.server(b"p" * 1000)
    assert recorder.stopped is not None and recorder.must_wait
    await recorder.keep_up()
    assert not recorder.must_wait
    recorder.server(b"later")  # not recorded
    recorder.close()
    seal = await recorder.sealed()
    data = recorder.path.read_bytes()
    assert len(data) <= 8192 and seal.size == len(data)
    _, found = parsed(recorder.path)
    assert found[-1].kind == MARKER and found[-1].payload == MARKERS["cap"].encode()
    assert [f.payload for f in found[:-1]] == [b"p" * 1000] * (len(found) - 1)
    assert [c.reason for c in hook.calls] == ["cap"]
    assert seal.details()["recording_stopped"] == "cap"


async def test_a_stop_that_cannot_be_audited_fails_the_relay(tmp_path: Path) -> None:
    recorder = RfbRecorder(
        tmp_path,
        "fail",
        META,
        limits=RecordingLimits(max_bytes=4096, min_free=0),
        on_stop=Hook(fail=True),
    )
    recorder.server(b"x" * 5000)
    with pytest.raises(RuntimeError, match="audit down"):
        await recorder.keep_up()
    recorder.close()
    await recorder.sealed()


async def test_recovery_cuts_a_torn_frame_and_hashes_the_rest(tmp_path: Path) -> None:
    recorder = RfbRecorder(tmp_path, "torn", META)
    recorder.server(b"seen")
    recorder.close()
    await recorder.sealed()
    whole = recorder.path.read_bytes()
    with recorder.path.open("ab") as handle:
        handle.write(bytes([SERVER]) + (5).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"half")
    found = recover_any(tmp_path, "torn")
    assert found is not None and recorder.path.read_bytes() == whole
    assert found.sha256 == hashlib.sha256(whole).hexdigest() and found.torn_bytes == 13
    assert found.name == "torn.rfb" and found.stopped is None
    assert recover_screen(tmp_path, "absent") is None


async def test_recovery_knows_a_stopped_recording_and_keeps_a_garbled_one_whole(
    tmp_path: Path,
) -> None:
    recorder = RfbRecorder(
        tmp_path, "capped", META, limits=RecordingLimits(max_bytes=4096, min_free=0)
    )
    recorder.server(b"x" * 5000)
    recorder.close()
    await recorder.sealed()
    found = recover_screen(tmp_path, "capped")
    assert found is not None and found.stopped == "cap" and found.torn_bytes == 0
    garbled = tmp_path / "garbled.rfb"
    garbled.write_bytes(b"not a recording at all")
    found = recover_screen(tmp_path, "garbled")
    assert (
        found is not None
        and found.torn_bytes == 0
        and garbled.read_bytes() == b"not a recording at all"
    )


def test_a_bad_file_is_named_bad() -> None:
    with pytest.raises(BadRecording, match="bad magic"):
        read_header(io.BytesIO(b"RFB 003.008\n"))
    with pytest.raises(BadRecording, match="cut short"):
        read_header(io.BytesIO(MAGIC + b"\0\0\0\x10{}"))
    stream = io.BytesIO(MAGIC + b"\0\0\0\x02{}" + b"Z\0\0\0\0\0\0\0\0")
    with pytest.raises(BadRecording, match="bad frame"):
        list(frames(stream, read_header(stream)[1]))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90d", 90 * 86400.0),
        ("12h", 43200.0),
        ("2w", 14 * 86400.0),
        ("30m", 1800.0),
        ("forever", None),
    ],
)
def test_keep_durations(text: str, seconds: float | None) -> None:
    assert parse_keep(text, "--recordings-keep") == seconds


@pytest.mark.parametrize("text", ["90", "0d", "-1d", "ninety days", "1.5d"])
def test_bad_keep_durations_say_what_to_give(text: str) -> None:
    with pytest.raises(ValueError, match="--recordings-keep must be a duration such as 90d"):
        parse_keep(text, "--recordings-keep")


async def test_retention_deletes_old_recordings_each_audited_first(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    old_cast, old_screen = folder / "old1.cast", folder / "old2.rfb"
    young, other = folder / "young.rfb", folder / "notes.txt"
    for path in (old_cast, old_screen, young, other):
        path.write_bytes(b"x" * 10)
    long_ago = time.time() - 100 * 86400
    for path in (old_cast, old_screen, other):
        os.utime(path, (long_ago, long_ago))
    live = RfbRecorder(folder, "live", META)  # being written: never swept
    os.utime(live.path, (long_ago, long_ago))
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    for session_id in ("old1", "old2", "young", "live"):  # their sessions ended
        audit.append("session.ended", actor="system", target=session_id)
    os.utime(young, (time.time() + 91 * 86400,) * 2)  # written after the keep's start
    try:  # 91 days from now: the keep has passed since their ends
        assert await sweep(folder, 90 * 86400.0, audit, now=time.time() + 91 * 86400) == 2
        records = [r for r in audit.records() if r.type == "recording.expired"]
    finally:
        live.close()
        await live.sealed()
        audit.close()
    assert not old_cast.exists() and not old_screen.exists()
    assert young.exists() and other.exists() and live.path.exists()
    assert sorted(r.target for r in records) == ["old1", "old2"]
    assert all(r.code == "AH1802" and r.actor == "system" for r in records)
    assert {r.details["recording"] for r in records} == {"old1.cast", "old2.rfb"}
    assert [r.details["keep_days"] for r in records] == [90, 90]
    assert all(isinstance(age := r.details["age_days"], float) and age >= 99 for r in records)


async def test_retention_keeps_the_file_when_the_audit_log_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    old = folder / "old.rfb"
    old.write_bytes(b"x")
    os.utime(old, (1.0, 1.0))
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    audit.append("session.ended", actor="system", target="old")
    audit.close()  # a closed log refuses every record
    with pytest.raises(AuditUnavailable):
        await sweep(folder, 86400.0, audit, now=time.time() + 2 * 86400)
    assert old.exists()


@pytest.mark.parametrize("kind", ["screen", "shell"])
async def test_a_recording_stopped_early_stays_claimable_until_its_session_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A cap seals the file long before the session ends: the end record must still
    get its seal (truncated, why), however long the session goes on after the cap."""
    monkeypatch.setattr(recording_file, "SEAL_KEPT", 0.01)
    limits = RecordingLimits(max_bytes=4096, min_free=0)
    recorder: RfbRecorder | AsciicastRecorder
    if kind == "screen":
        recorder = RfbRecorder(tmp_path, "early", META, limits=limits, on_stop=Hook())
        recorder.server(b"x" * 5000)
        await recorder.keep_up()
    else:
        recorder = AsciicastRecorder(tmp_path, "early", 80, 24, title="t", limits=limits)
        recorder.output(b"x" * 5000)
        await recorder.flushed()
    await asyncio.wait_for(asyncio.shield(recorder._done), 5)  # the file is sealed
    await asyncio.sleep(0.05)  # longer than SEAL_KEPT: the session goes on meanwhile
    assert is_open(recorder.name)
    recorder.close()
    seal = await settle(recorder.name)
    assert seal is not None and seal.stopped is not None and seal.stopped.reason == "cap"
    assert seal.details()["recording_truncated"] is True
    assert not is_open(recorder.name)
