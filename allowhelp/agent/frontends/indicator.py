"""The "help session active" window: it stays while a grant lives.

It names who is connected and to what, and its one button, "End session",
calls ``service.end(session_id)``. Closing it any other way brings it back (a
running session is never invisible); it closes itself when the session ends
for any other reason. Tk keeps it above other windows; zenity and kdialog
cannot ask for that.
"""

from __future__ import annotations

import asyncio
import logging
import time

from allowhelp.agent.consent import ConsentRefused, Grant, Pending
from allowhelp.agent.frontends.process import WindowProcess, WindowSet
from allowhelp.agent.frontends.toolkit import END, Toolkit
from allowhelp.agent.i18n import _
from allowhelp.agent.service import ConsentService

log = logging.getLogger(__name__)

QUICK_EXIT = 2.0  # a window that keeps closing this fast is broken, not dismissed
MAX_QUICK_EXITS = 3


def describe(grant: Grant) -> str:
    names = {"technician": grant.technician}
    if grant.kind == "admin-shell":
        first = _("%(technician)s is connected: an administrator (root) shell on this PC.")
    elif grant.kind == "shell":
        first = _("%(technician)s is connected: a command shell (terminal) on this PC.")
    elif grant.view_only:
        first = _("%(technician)s is connected: a view of your screen (they cannot control it).")
    else:
        first = _("%(technician)s is connected: your screen, with control of mouse and keyboard.")
    since = time.strftime("%H:%M", time.localtime(grant.granted_at))
    then = _('Since %(time)s. Click "%(button)s" to stop it at once.')
    return first % names + "\n" + then % {"time": since, "button": _(END)}


class IndicatorFrontend:
    def __init__(self, service: ConsentService, toolkit: Toolkit) -> None:
        self._service = service
        self.toolkit = toolkit
        self.windows = WindowSet()

    def prompt(self, pending: Pending) -> None:
        """Only the dialog and terminal ask."""

    def prompt_closed(self, session_id: str) -> None:
        """Nothing is shown until a grant exists."""

    def active(self, grant: Grant) -> None:
        self._open(grant, quick_exits=0)
        log.info("session=%s session indicator shown", grant.session_id)

    def ended(self, session_id: str) -> None:
        self.windows.close(session_id)

    async def close(self) -> None:
        await self.windows.close_all()

    def _open(self, grant: Grant, quick_exits: int) -> None:
        window = self.toolkit.indicator(self._service.config.organisation, describe(grant))

        async def watch(process: WindowProcess) -> None:
            await self._watch(grant, process, quick_exits)

        self.windows.open(grant.session_id, window, watch)

    async def _watch(self, grant: Grant, process: WindowProcess, quick_exits: int) -> None:
        started = time.monotonic()
        outcome = await process.run()
        self.windows.forget(grant.session_id, process)
        if outcome is None:  # closed by us: the session ended
            return
        if self.toolkit.ends_session(outcome):
            self._end(grant.session_id)
            return
        if not self._live(grant.session_id):
            return
        quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT else 0
        if quick_exits >= MAX_QUICK_EXITS:
            log.warning(
                "session=%s the session window keeps failing; `allowhelp-agent end` still works",
                grant.session_id,
            )
            return
        await asyncio.sleep(0.2 * quick_exits)
        if self._live(grant.session_id) and self.windows.get(grant.session_id) is None:
            self._open(grant, quick_exits)

    def _live(self, session_id: str) -> bool:
        return any(g.session_id == session_id for g in self._service.gate.grants())

    def _end(self, session_id: str) -> None:
        try:
            self._service.end(session_id)
        except ConsentRefused as exc:
            log.info("session=%s already over: %s", session_id, exc)
        else:
            log.info("session=%s ended from the session window", session_id)
