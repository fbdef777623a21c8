"""Running one fleet job as root: a script, or apt, with no TTY, a timeout and bounded output.

Nothing here goes through a shell on the way: a script is written to a
root-only file and run as a program (its ``#!`` line, else ``/bin/sh FILE``);
package names, already checked against Debian's naming rule, are separate
argv entries of ``apt-get``. The environment is fixed and clean, stdin is
``/dev/null``, the job gets its own process group (ended whole at the
timeout), and only the end of its output is kept (``MAX_OUTPUT`` characters),
whatever it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from allowhelp.protocol.jobs import MAX_OUTPUT, JobSpec

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
}
# -o DPkg::Lock::Timeout: wait for the dpkg lock (unattended-upgrades, another job)
# instead of failing at once; the job's own timeout still bounds the whole.
APT = (
    "apt-get",
    "-q",
    "-y",
    "-o",
    "DPkg::Lock::Timeout=300",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
)
KILL_GRACE = 5.0
_KEEP_BYTES = MAX_OUTPUT * 4  # UTF-8: enough bytes for MAX_OUTPUT characters


@dataclass(frozen=True)
class Outcome:
    state: str  # succeeded | failed | timed_out
    exit_code: int
    output: str
    started: float
    finished: float


class OutputTail:
    """The last bytes of a stream, and how many came in all."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._kept = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self._chunks.append(data)
        self._kept += len(data)
        while self._kept - len(self._chunks[0]) >= _KEEP_BYTES:
            self._kept -= len(self._chunks.popleft())

    def text(self) -> str:
        data = b"".join(self._chunks)
        text = data.decode("utf-8", errors="replace")[-MAX_OUTPUT:]
        dropped = self.total - len(text.encode("utf-8", errors="replace"))
        if dropped > 0:
            marker = f"[... {dropped} bytes before this were not kept]\n"
            text = marker + text[len(marker) :]
        return text


async def run_job(spec: JobSpec, *, apt_config: str = "") -> Outcome:
    started = time.time()
    deadline = time.monotonic() + spec.timeout
    tail = OutputTail()
    env = dict(BASE_ENV)
    if apt_config:
        env["APT_CONFIG"] = apt_config
    if spec.action == "script":
        folder = Path(tempfile.mkdtemp(prefix="allowhelp-job-"))  # 0700, root's
        try:
            script = folder / "job"
            script.write_text(spec.script if spec.script.endswith("\n") else spec.script + "\n")
            script.chmod(0o700)
            argv = [str(script)] if spec.script.startswith("#!") else ["/bin/sh", str(script)]
            state, code = await _run(argv, env, deadline, tail)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        state, code = "succeeded", 0
        for argv in package_commands(spec):
            tail.add(("$ " + " ".join(argv) + "\n").encode())
            state, code = await _run(argv, env, deadline, tail)
            if state != "succeeded":
                break
    return Outcome(state, code, tail.text(), started, time.time())


def package_commands(spec: JobSpec) -> list[list[str]]:
    commands = []
    if spec.install:
        commands.append([*APT, "update"])
        commands.append([*APT, "--no-install-recommends", "install", *spec.install])
    if spec.remove:
        commands.append([*APT, "remove", *spec.remove])
    return commands


async def _run(
    argv: Sequence[str], env: dict[str, str], deadline: float, tail: OutputTail
) -> tuple[str, int]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,  # no controlling terminal; one group to end
        )
    except OSError as exc:
        tail.add(f"cannot start {argv[0]}: {exc.strerror or exc}\n".encode())
        return "failed", -1
    if proc.stdout is None:  # PIPE was asked for: never
        raise RuntimeError("the job's output pipe is missing")
    reading = asyncio.ensure_future(_drain(proc.stdout, tail))
    try:
        await asyncio.wait_for(proc.wait(), max(deadline - time.monotonic(), 0.1))
    except asyncio.TimeoutError:
        await _end_group(proc)
        reading.cancel()
        tail.add(b"\n[allowhelp: the job ran out of time and was stopped]\n")
        return "timed_out", -1
    except asyncio.CancelledError:  # the service stops: the job's processes end with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        reading.cancel()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(proc.wait(), KILL_GRACE)  # reaped, not left a zombie
        raise
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reading, KILL_GRACE)  # a child may keep the pipe open
    reading.cancel()
    code = proc.returncode if proc.returncode is not None else -1
    return ("succeeded" if code == 0 else "failed"), (code if code >= 0 else 128 - code)


async def _drain(stream: asyncio.StreamReader, tail: OutputTail) -> None:
    while chunk := await stream.read(65536):
        tail.add(chunk)


async def _end_group(proc: asyncio.subprocess.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
            return
        except asyncio.TimeoutError:
            continue
