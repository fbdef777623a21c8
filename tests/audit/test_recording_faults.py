"""Recordings under faults: caps, a full disk, a write error, a broker killed mid-shell.

The disks are real (small tmpfs mounts), the brokers and agents real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from allowhelp.broker.audit.cast_recovery import recover_recording
from allowhelp.broker.audit.recording import (
    MARKERS,
    AsciicastRecorder,
    RecordingLimits,
    Stopped,
    file_sha256,
)
from allowhelp.broker.settings import BrokerSettings, parse_size
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    broker_cli,
    online,
    running_fleet,
    wait_for,
    wait_pending,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def cast_events(data: bytes) -> tuple[dict[str, Any], list[list[Any]]]:
    """The header and events of an asciicast v2 file; every line must parse."""
    lines = data.decode().splitlines()
    assert data.endswith(b"\n")
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def output_text(data: bytes) -> str:
    return "".join(event[2] for event in cast_events(data)[1] if event[1] == "o")


# settings


class SizeOptions(TypedDict, total=False):
    """The size settings of ``BrokerSettings.build``, as the command line gives them."""

    recording_max: str
    recordings_min_free: str


def test_recording_settings_and_their_defaults(tmp_path: Path) -> None:
    assert [parse_size(t, "x") for t in ("512MiB", "512M", "1g", "4096", "2KiB")] == [
        512 << 20,
        512 << 20,
        1 << 30,
        4096,
        2048,
    ]
    plain = BrokerSettings.build(tmp_path)
    assert plain.recordings_dir == tmp_path.resolve() / "recordings"
    assert (plain.recording_max, plain.recordings_min_free) == (512 << 20, 1 << 30)
    moved = BrokerSettings.build(tmp_path, recordings=tmp_path / "elsewhere", recording_max="1G")
    assert moved.recordings_dir == tmp_path.resolve() / "elsewhere"
    assert moved.recording_max == 1 << 30
    bad_options: list[SizeOptions] = [
        {"recording_max": "12"},
        {"recording_max": "lots"},
        {"recordings_min_free": "5%"},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError, match="--recording"):
            BrokerSettings.build(tmp_path, **bad)
    refused = broker_cli("serve", "--data", str(tmp_path / "b"), "--recording-max", "1.5G")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--recording-max must be a size" in refused.stderr


# the recorder alone


class Hook:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Stopped] = []
        self.fail = fail

    async def __call__(self, stopped: Stopped) -> None:
        self.calls.append(stopped)
        if self.fail:
            raise RuntimeError("audit down")


async def test_the_cap_stops_the_recording_with_a_marker(tmp_path: Path) -> None:
    hook = Hook()
    limits = RecordingLimits(max_bytes=8192, min_free=0)
    recorder = AsciicastRecorder(tmp_path, "cap", 80, 24, title="t", limits=limits, on_stop=hook)
    for n in range(200):
        recorder.output(f"{n:04d} ".encode() * 20)
        await recorder.flushed()
    recorder.close()
    seal = await recorder.sealed()
    data = recorder.path.read_bytes()
    assert len(data) <= 8192 and seal.size == len(data)
    assert cast_events(data)[1][-1][1:] == ["m", MARKERS["cap"]]
    assert [c.reason for c in hook.calls] == ["cap"] and hook.calls[0].recorded_bytes == len(data)
    assert seal.sha256 == file_sha256(recorder.path)
    assert seal.details() == {
        "recording_bytes": len(data),
        "recording_truncated": True,
        "recording_stopped": "cap",
    }


async def test_below_the_floor_nothing_but_the_header_and_marker(tmp_path: Path) -> None:
    hook = Hook()
    limits = RecordingLimits(min_free=1 << 60)
    recorder = AsciicastRecorder(tmp_path, "low", 80, 24, title="t", limits=limits, on_stop=hook)
    recorder.output(b"secret output")
    await recorder.flushed()
    recorder.close()
    seal = await recorder.sealed()
    header, events = cast_events(recorder.path.read_bytes())
    assert header["version"] == 2 and [e[1:] for e in events] == [["m", MARKERS["low_space"]]]
    assert seal.stopped is not None and seal.stopped.reason == "low_space"
    assert [c.reason for c in hook.calls] == ["low_space"]


def test_the_audit_log_folder_keeps_five_percent_of_a_shared_disk(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    shared = RecordingLimits(min_free=0, protect=tmp_path).floor(tmp_path)
    assert shared == int(st.f_blocks * st.f_frsize * 0.05)
    assert RecordingLimits(min_free=0).floor(tmp_path) == 0


async def test_output_waits_until_the_stop_is_audited_and_fails_if_it_cannot_be(
    tmp_path: Path,
) -> None:
    limits = RecordingLimits(max_bytes=4096, min_free=0)
    hook = Hook(fail=True)
    recorder = AsciicastRecorder(tmp_path, "fail", 80, 24, title="t", limits=limits, on_stop=hook)
    recorder.output(b"x" * 5000)
    with pytest.raises(RuntimeError, match="audit down"):
        await recorder.flushed()
    recorder.close()
    await recorder.sealed()


async def test_an_echo_written_on_the_loop_short_or_failing_keeps_file_and_digest_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's own write of a keystroke's echo (``_write_inline``): a short
    write is finished, a failed one cuts the file back, stops the recording as a
    write error (audited before ``flushed`` returns) and the digest is of the file."""
    real_pwrite = os.pwrite
    faults: list[str] = []

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        fault = faults.pop(0) if faults else ""
        if fault == "short":
            return real_pwrite(fd, bytes(data)[:3], offset)
        if fault == "fail":
            real_pwrite(fd, bytes(data)[:3], offset)  # a torn start, then the error
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    hook = Hook()
    limits = RecordingLimits(min_free=0)
    recorder = AsciicastRecorder(tmp_path, "echo", 80, 24, title="t", limits=limits, on_stop=hook)
    for key in "abc":  # the disk proves fast: echoes go on the loop
        recorder.output(key.encode())
        await recorder.flushed()
    faults.append("short")
    recorder.output(b"d")
    assert recorder.on_disk  # written at once, short write and all
    faults.extend(["fail", "fail"])  # the loop's write, and append's second try
    recorder.output(b"e")
    await recorder.flushed()
    assert [c.reason for c in hook.calls] == ["write_error"]
    recorder.output(b"f")  # a stopped recording takes nothing more
    recorder.close()
    seal = await recorder.sealed()
    data = recorder.path.read_bytes()
    assert seal.stopped is not None and seal.stopped.reason == "write_error"
    assert seal.sha256 == hashlib.sha256(data).hexdigest() and seal.size == len(data)
    assert output_text(data) == "abcd"


@needs_root
async def test_a_disk_filled_by_another_writer_cuts_back_to_whole_lines(tmp_path: Path) -> None:
    """ENOSPC mid-write (something else took the space the estimate counted on):
    the file is cut back to whole lines and the digest is of that."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        hook = Hook()
        limits = RecordingLimits(min_free=0)
        recorder = AsciicastRecorder(disk, "full", 80, 24, title="t", limits=limits, on_stop=hook)
        recorder.output(b"before the disk filled\r\n")
        await recorder.flushed()
        with (disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
            filler.write(b"f" * (1 << 20))
        for n in range(100):
            recorder.output(f"{n:05d}-".encode() * 2000)
            await recorder.flushed()
        recorder.close()
        seal = await recorder.sealed()
        data = recorder.path.read_bytes()
        assert seal.stopped is not None and seal.stopped.reason == "write_error"
        assert [c.reason for c in hook.calls] == ["write_error"]
        assert seal.sha256 == hashlib.sha256(data).hexdigest() and seal.size == len(data)
        assert output_text(data).startswith("before the disk filled")  # every line whole


def test_recovery_cuts_a_torn_line_and_hashes_the_rest(tmp_path: Path) -> None:
    whole = b'{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "seen"]\n'
    path = tmp_path / "torn.cast"
    path.write_bytes(whole + b'[0.2, "o", "never se')
    found = recover_recording(tmp_path, "torn")
    assert found is not None and path.read_bytes() == whole
    assert found.sha256 == hashlib.sha256(whole).hexdigest() and found.torn_bytes == 20
    assert found.details() == {
        "recording_recovered": True,
        "recording_bytes": len(whole),
        "recording_torn_bytes": 20,
    }
    assert recover_recording(tmp_path, "absent") is None


def test_recovery_knows_a_recording_that_had_stopped(tmp_path: Path) -> None:
    marker = json.dumps([1.5, "m", MARKERS["cap"]], ensure_ascii=False).encode()
    (tmp_path / "capped.cast").write_bytes(b'{"version": 2}\n' + marker + b"\n")
    found = recover_recording(tmp_path, "capped")
    assert found is not None and found.stopped == "cap" and found.torn_bytes == 0


# a real broker and agent


class Terminal:
    """The technician's side: everything received is kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen = bytearray()

    async def send(self, text: str) -> None:
        await self.ws.send(text.encode())

    async def expect(self, needle: bytes, timeout: float = 20) -> None:
        async def read() -> None:
            while needle not in self.seen[-max(len(needle) * 4, 1 << 16) :]:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes)
                self.seen += frame

        await asyncio.wait_for(read(), timeout)

    async def drain(self) -> None:
        """Read until the broker closes the socket (or is gone)."""
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes)
                self.seen += frame


def consented_shell(desk: Desk, agent: Agent) -> str:
    session = desk.request(agent.agent_id).json()
    wait_pending(agent, session["id"])
    assert agent_call(agent, "allow", session["id"]).returncode == 0
    desk.wait_state(session["id"], "active")
    return str(session["id"])


@contextlib.asynccontextmanager
async def terminal(desk: Desk, session_id: str) -> AsyncIterator[Terminal]:
    async with websockets.connect(
        desk.ws_url(session_id) + "?cols=100&rows=30",
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
        max_size=2**22,
        ping_interval=None,
    ) as ws:
        yield Terminal(ws)


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def record(broker: Broker, type_: str, session_id: str) -> dict[str, Any] | None:
    found = [r for r in audit_records(broker) if r["type"] == type_ and r["target"] == session_id]
    return found[0] if found else None


def replay(broker: Broker, session_id: str) -> bytes:
    admin = Desk.login(broker, ADMIN, ADMIN_PW)  # a login: the audit log still takes records
    try:
        answer = admin.client.get(f"/api/v1/sessions/{session_id}/recording")
        assert answer.status_code == 200, answer.text
        return answer.content
    finally:
        admin.close()


FLOODS = {
    # name: (serve flags, where the tmpfs goes, its size, the stop reason)
    "cap": (["--recording-max", "256KiB", "--recordings-min-free", "0"], "rec", "2m", "cap"),
    "floor": (["--recordings-min-free", "1MiB"], "rec", "2m", "low_space"),
    # The data folder (audit log) on the same small disk: 5 % of it stays free.
    "shared": (["--recordings-min-free", "0"], "broker", "24m", "low_space"),
}


@needs_root
@pytest.mark.parametrize("case", sorted(FLOODS))
async def test_a_flood_stops_the_recording_not_the_shell_or_the_help_desk(
    tmp_path: Path, case: str
) -> None:
    flags, mount, size, reason = FLOODS[case]
    with tmpfs(tmp_path / mount, size) as disk:
        if mount == "rec":
            flags = [*flags, "--recordings", str(disk)]
        folder = disk if mount == "rec" else disk / "recordings"
        with running_fleet(tmp_path, broker_args=tuple(flags)) as (_, broker, agent):
            await flood_until_stopped(broker, agent, folder, reason)


async def flood_until_stopped(broker: Broker, agent: Agent, folder: Path, reason: str) -> None:
    desk = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
    try:
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with terminal(desk, session_id) as term:
            await term.send("yes allowhelp-flood\n")
            reading = asyncio.create_task(term.drain())
            stopped = await asyncio.to_thread(
                wait_for,
                lambda: record(broker, "recording.stopped", session_id),
                60,
                "recording.stopped",
                0.3,
            )
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            assert stopped["details"]["reason"] == reason, stopped
            await term.ws.send(b"\x03")
            await term.send("echo still-$((2+3))\n")
            await term.expect(b"still-5")  # the shell goes on, unrecorded
            await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
        path = folder / f"{session_id}.cast"
        on_disk = path.read_bytes()
        # The shell went on after the recording stopped: the technician saw what
        # came after, the file does not hold it (byte counts would race the drain).
        assert b"still-5" in term.seen
        assert "still-5" not in output_text(on_disk)
        ended = record(broker, "session.ended", session_id)
        assert ended is not None
        details = ended["details"]
        assert details["recording_sha256"] == hashlib.sha256(on_disk).hexdigest()
        assert (details["recording_stopped"], details["recording_truncated"]) == (reason, True)
        assert details["recording_bytes"] == len(on_disk)
        events = cast_events(on_disk)[1]
        if reason != "write_error":
            assert events[-1][1:] == ["m", MARKERS[reason]]  # type: ignore[index]
        assert "allowhelp-flood\r\n" in output_text(on_disk)
        assert replay(broker, session_id) == on_disk
        types = [r["type"] for r in audit_records(broker)]
        assert types.index("recording.stopped") < types.index("session.ended")
    finally:
        await asyncio.to_thread(desk.close)
    verify = broker_cli("audit", "verify", "--data", str(broker.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr


KILLS = 3


async def test_a_broker_killed_mid_shell_leaves_a_recording_that_replays(tmp_path: Path) -> None:
    """kill -9 at a random moment of a streaming shell: after the restart the end
    record holds the digest of the file on disk, which holds all the technician saw."""
    seed = random.randrange(1 << 32)
    chance = random.Random(seed)
    with running_fleet(tmp_path) as (_, broker, agent):
        for attempt in range(KILLS):
            delay = chance.uniform(0.05, 1.5)
            await kill_mid_shell(broker, agent, delay, f"seed={seed} attempt={attempt}")
    verify = broker_cli("audit", "verify", "--data", str(broker.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def kill_mid_shell(broker: Broker, agent: Agent, delay: float, why: str) -> None:
    desk = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
    session_id = await asyncio.to_thread(consented_shell, desk, agent)
    async with terminal(desk, session_id) as term:
        await term.send("seq 1 100000000\n")
        reading = asyncio.create_task(term.drain())
        await asyncio.sleep(delay)  # the random moment of the kill, not a wait for a fact
        await asyncio.to_thread(broker.kill)
        await asyncio.wait_for(reading, 30)  # all the broker had sent before it died
    await asyncio.to_thread(desk.close)
    await asyncio.to_thread(broker.start)
    ended = record(broker, "session.ended", session_id)
    assert ended is not None, why
    details = ended["details"]
    path = broker.data / "recordings" / f"{session_id}.cast"
    on_disk = path.read_bytes()
    assert details["end_reason"] == "broker_restart", why
    assert details["recording_recovered"] is True, why
    assert details["recording_sha256"] == hashlib.sha256(on_disk).hexdigest(), why
    seen = bytes(term.seen).decode("utf-8", "replace")
    recorded = output_text(on_disk)
    assert recorded.startswith(seen), (why, len(seen), len(recorded))
    assert replay(broker, session_id) == on_disk
    await asyncio.to_thread(
        wait_for, lambda: online(broker, agent.agent_id), 30, "the agent to come back"
    )
