"""Ending a child's process group without ever blocking the event loop.

One mechanism for the shell (a PTY) and the screen (x11vnc). A reaper thread
does all the waiting: it may first give the program ``patience`` to exit on
its own, then sends the group each signal in turn, ``grace`` apart, and
finally SIGKILLs whatever is left of the group.

The leader's exit status is reported (the future returned resolves, on the
loop) as soon as the leader exits, but the leader is left a zombie until the
end: its pid is the group's id, and an unreaped zombie keeps that number from
being handed to an unrelated process that the last SIGKILL would then hit.
The rest of the group keeps the grace it was given when the leader went (a
script that cleans up on SIGHUP, say, gets to finish; SIGKILL right after the
leader's exit left stale lock files behind).

The threads are not daemons: an agent that is stopping waits for them (the
grace periods and a few seconds at most), so nothing it started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

KILL_WAIT = 5.0
POLL_INTERVAL = 0.02  # how often the reaper thread looks (what Popen.wait does too)


def end_process_group(
    proc: subprocess.Popen[bytes],
    signals: Sequence[signal.Signals],
    grace: float,
    *,
    name: str,
    patience: float = 0.0,
) -> asyncio.Future[int]:
    """Start ending ``proc`` and its process group; returns at once.

    The future gets the leader's exit status (negative: the signal that ended
    it; -1 when it could not be known) as soon as the leader has exited; the
    rest of its group may still be in its grace then, SIGKILL comes after.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[int] = loop.create_future()
    if proc.returncode is not None:  # reaped already: its pid may belong to another group now
        ended.set_result(proc.returncode)
        return ended
    plan = _Plan(proc, tuple(signals), grace, name, patience)
    threading.Thread(target=_reap, args=(plan, loop, ended), name=f"{name}-reaper").start()
    return ended


@dataclass(frozen=True)
class _Plan:
    proc: subprocess.Popen[bytes]
    signals: tuple[signal.Signals, ...]
    grace: float
    name: str
    patience: float


class _Reporter:
    """Resolves the future once, from the reaper thread, on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ended: asyncio.Future[int]) -> None:
        self._loop = loop
        self._ended = ended
        self.done = False

    def __call__(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(_resolve, self._ended, status)


def _reap(plan: _Plan, loop: asyncio.AbstractEventLoop, ended: asyncio.Future[int]) -> None:
    proc, report = plan.proc, _Reporter(loop, ended)
    try:
        exited = _exit_status(proc.pid, plan.patience) if plan.patience else None
        if exited is not None:
            report(exited)
        _escalate(plan, report)
        if proc.returncode is None:  # never signal a pid that someone else has reaped
            signal_group(proc.pid, signal.SIGKILL)  # whatever of the group is left
        status = proc.wait(timeout=KILL_WAIT)
        log.info("%s pid=%d ended with status %d", plan.name, proc.pid, status)
        report(status)
    except subprocess.TimeoutExpired:
        log.error("%s pid=%d is still there %.0f s after SIGKILL", plan.name, proc.pid, KILL_WAIT)
    except OSError as exc:
        log.error("%s pid=%d could not be waited for: %s", plan.name, proc.pid, exc)
    finally:
        report(-1)


def _escalate(plan: _Plan, report: _Reporter) -> None:
    """Each signal to the group, a grace apart, until a grace in which the leader
    has exited has run out (the rest of the group gets that grace too)."""
    pid = plan.proc.pid
    for sig in plan.signals:
        signal_group(pid, sig)
        deadline = time.monotonic() + plan.grace
        status = _exit_status(pid, plan.grace)
        if status is not None:
            report(status)
            time.sleep(max(0.0, deadline - time.monotonic()))
            return
        log.warning("%s pid=%d ignored %s", plan.name, pid, sig.name)


def _exit_status(pid: int, timeout: float) -> int | None:
    """The child's exit status if it exits within ``timeout`` (negative: the signal
    that ended it), else None. It is left unreaped (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere: gone, status unknown
            return -1
        if exited is not None:
            code = exited.si_status
            return code if exited.si_code == os.CLD_EXITED else -code
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _resolve(ended: asyncio.Future[int], status: int) -> None:
    if not ended.done():
        ended.set_result(status)
