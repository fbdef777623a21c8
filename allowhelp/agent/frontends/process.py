"""Dialog windows as child processes, driven without ever blocking the event loop.

A front-end opens one window per session and closes it when the session's
prompt closes elsewhere (answered on the CLI, expired, cancelled) or when the
agent stops: closing kills the process, whatever state it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import locale
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from allowhelp.agent.frontends.toolkit import Outcome, Window

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
FALLBACK_LOCALE = "C.UTF-8"  # in every glibc since 2.35, and in Debian's before


@functools.cache
def session_locale_works() -> bool:
    """Whether the C library knows the session's locale (``fr_BE.UTF-8`` may be
    asked for and not generated). Checked once, the process's own locale restored."""
    before = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_ALL, before)
    return True


def dialog_environment() -> dict[str, str] | None:
    """The dialog's environment: ours, unless the C library lacks our locale. Then
    GTK falls back to ASCII and zenity refuses any accented argument ("This option
    is not available"), so the dialog runs in C.UTF-8: every word it shows is
    ours, already in the user's language (gettext needs no C library locale)."""
    if session_locale_works():
        return None
    return {**os.environ, "LC_ALL": FALLBACK_LOCALE}


class WindowProcess:
    """One dialog process: ``run`` waits for it, ``close`` kills it (at any time)."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self._proc: asyncio.subprocess.Process | None = None
        self.closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def run(self) -> Outcome | None:
        """The outcome, or None when it was closed by us or could not start."""
        if self.closed:
            return None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._window.argv,
                stdin=asyncio.subprocess.PIPE if self._window.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dialog_environment(),
            )
        except OSError as exc:
            log.warning("cannot start %s: %s", self._window.argv[0], exc)
            return None
        if self.closed:  # closed while it was starting
            self._kill()
        try:
            out, err = await self._proc.communicate(self._window.stdin)
        except asyncio.CancelledError:
            self._kill()
            await self._proc.wait()
            raise
        code = self._proc.returncode
        if self.closed or code is None:
            return None
        if code not in (0, 1):
            log.debug("%s exited with %s: %s", self._window.argv[0], code, err[-500:])
        return Outcome(code, out.decode(errors="replace"))

    def close(self) -> None:
        self.closed = True
        self._kill()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


class WindowSet:
    """The windows a front-end has open, by session id, and the tasks driving them."""

    def __init__(self) -> None:
        self._windows: dict[str, WindowProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def open(
        self,
        session_id: str,
        window: Window,
        then: Callable[[WindowProcess], Coroutine[Any, Any, None]],
    ) -> WindowProcess:
        """Start ``window`` for this session (closing an older one) and run ``then``."""
        self.close(session_id)
        process = WindowProcess(window)
        self._windows[session_id] = process
        task = asyncio.get_running_loop().create_task(then(process))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return process

    def get(self, session_id: str) -> WindowProcess | None:
        return self._windows.get(session_id)

    def forget(self, session_id: str, process: WindowProcess) -> None:
        if self._windows.get(session_id) is process:
            del self._windows[session_id]

    def close(self, session_id: str) -> None:
        process = self._windows.pop(session_id, None)
        if process is not None:
            process.close()

    async def close_all(self) -> None:
        for session_id in list(self._windows):
            self.close(session_id)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a dialog window failed", exc_info=task.exception())
