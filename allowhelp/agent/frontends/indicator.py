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
from allowhelp.agent.consentviews import ConsentService
from allowhelp.agent.errors import AgentError
from allowhelp.agent.frontends.process import WindowProcess, WindowSet
from allowhelp.agent.frontends.toolkit import END, Toolkit
from allowhelp.agent.i18n import _
from allowhelp.agent.news import NewsLine

log = logging.getLogger(__name__)

QUICK_EXIT = 2.0  # a window that keeps closing this fast is broken, not dismissed
MAX_QUICK_EXITS = 3


NEWS_SHOWN = 8  # the last chat messages and file transfers shown in the window


def describe(grant: Grant) -> str:
    names = {"technician": grant.technician}
    if grant.joins:  # an invited participant (#18): this window's button removes them
        first = _joined(grant)
    elif grant.kind == "admin-shell":
        first = _("%(technician)s is connected: an administrator (root) shell on this PC.")
    elif grant.kind == "shell":
        first = _("%(technician)s is connected: a command shell (terminal) on this PC.")
    elif grant.kind == "files" and grant.view_only:
        first = _(
            "%(technician)s is connected: your files, view only (they cannot change anything;"
            " each file fetched is listed here)."
        )
    elif grant.kind == "files":
        first = _(
            "%(technician)s is connected: your files, with your rights (each file sent or"
            " fetched is listed here)."
        )
    elif grant.view_only:
        first = _("%(technician)s is connected: a view of your screen (they cannot control it).")
    else:
        first = _("%(technician)s is connected: your screen, with control of mouse and keyboard.")
    since = time.strftime("%H:%M", time.localtime(grant.granted_at))
    then = _('Since %(time)s. Click "%(button)s" to stop it at once.')
    return first % names + "\n" + then % {"time": since, "button": _(END)}


def _joined(grant: Grant) -> str:
    if grant.kind == "screen":
        if grant.view_only:
            return _("%(technician)s also watches your screen (observer: they cannot control it).")
        return _("%(technician)s also sees and controls your screen.")
    if grant.mode == "control":
        return _("%(technician)s also uses your terminal (they can type).")
    return _("%(technician)s also watches your terminal (observer: they cannot type).")


class IndicatorFrontend:
    def __init__(self, service: ConsentService, toolkit: Toolkit) -> None:
        self._service = service
        self.toolkit = toolkit
        self.windows = WindowSet()
        self._grants: dict[str, Grant] = {}
        service.news.listeners.append(self._news)

    def prompt(self, pending: Pending) -> None:
        """Only the dialog and terminal ask."""

    def prompt_closed(self, session_id: str) -> None:
        """Nothing is shown until a grant exists."""

    def active(self, grant: Grant) -> None:
        self._grants[grant.session_id] = grant
        self._open(grant, quick_exits=0)
        log.info("session=%s session indicator shown", grant.session_id)
        self._everyone_changed(grant)

    def ended(self, session_id: str) -> None:
        grant = self._grants.pop(session_id, None)
        self.windows.close(session_id)
        self.windows.close(_reply_key(session_id))
        if grant is not None:
            self._everyone_changed(grant)

    def _everyone_changed(self, grant: Grant) -> None:
        """Someone joined or left a session: its own window names everyone anew (#18)."""
        owner = self._grants.get(grant.joins) if grant.joins else None
        if owner is not None and self._live(owner.session_id):
            self._open(owner, quick_exits=0)

    async def close(self) -> None:
        await self.windows.close_all()

    def _news(self, line: NewsLine) -> None:
        """A chat message or a file transfer: the window shows it at once (shown anew)."""
        grant = self._grants.get(line.session_id)
        if grant is None or not self._live(line.session_id):
            return
        self._open(grant, quick_exits=0)
        if line.kind == "chat" and line.sender != "you":
            self._reply(grant)  # the technician wrote: the answer box opens with it

    def _text(self, grant: Grant) -> str:
        text = describe(grant) + self._others(grant)
        news = self._service.news.lines(grant.session_id)[-NEWS_SHOWN:]
        if not news:
            return text
        return text + "\n\n" + "\n".join(line.line() for line in news)

    def _others(self, grant: Grant) -> str:
        """The people invited into this session, each with how they take part (#18)."""
        members = [g for g in self._service.gate.grants() if g.joins == grant.session_id]
        if not members:
            return ""
        lines = [_("Also connected (each has a window to remove them):")]
        for member in members:
            how = _("control") if member.mode == "control" else _("observer")
            lines.append(f"• {member.technician} ({member.username}): {how}")
        return "\n\n" + "\n".join(lines)

    def _reply(self, grant: Grant) -> None:
        if self.windows.get(_reply_key(grant.session_id)) is not None:
            return  # one answer box at a time
        chat = [line.line() for line in self._service.news.chat(grant.session_id)[-NEWS_SHOWN:]]
        asked = "\n".join([*chat, "", f"Your message to {grant.technician}:"]).strip()
        window = self.toolkit.entry(self._service.config.organisation, asked)

        async def send(process: WindowProcess) -> None:
            outcome = await process.run()
            self.windows.forget(_reply_key(grant.session_id), process)
            text = self.toolkit.entered(outcome) if outcome is not None else ""
            if text and self._live(grant.session_id):
                try:
                    self._service.say(grant.session_id, text)
                except (ConsentRefused, AgentError) as exc:
                    log.warning("session=%s message not sent: %s", grant.session_id, exc)
            if self._live(grant.session_id) and self.windows.get(grant.session_id) is None:
                self._open(grant, quick_exits=0)

        self.windows.open(_reply_key(grant.session_id), window, send)

    def _open(self, grant: Grant, quick_exits: int) -> None:
        window = self.toolkit.indicator(self._service.config.organisation, self._text(grant))

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
        if self.toolkit.wants_reply(outcome) and self._live(grant.session_id):
            self._reply(grant)
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


def _reply_key(session_id: str) -> str:
    return f"reply:{session_id}"
