"""The terminal prompt, when the agent runs in a terminal.

It prints the exact prompt text and reads one answer a line: ``a`` allow,
``v`` allow view only (screen), ``d`` deny; ``e`` ends the running sessions.
Answers go through ``service.decide(..., via="terminal")`` like every other
front-end. Reading uses the event loop's reader callback (no blocking read,
no change to the terminal's flags); when the terminal closes, the prompt
stops and the agent keeps running for the dialog and the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from typing import TextIO

from allowhelp.agent.consent import ConsentRefused, Grant, Pending
from allowhelp.agent.consentviews import ConsentService
from allowhelp.agent.frontends.toolkit import Answer, plain
from allowhelp.agent.i18n import N_, _, ngettext
from allowhelp.agent.service import NotConnected

log = logging.getLogger(__name__)

MAX_LINE = 4096
KIND_NAMES = {
    "shell": N_("command shell"),
    "admin-shell": N_("administrator shell"),
    "screen": N_("screen"),
}
WORDS: dict[str, Answer] = {
    "a": "allow",
    "allow": "allow",
    "v": "view",
    "view": "view",
    "d": "deny",
    "deny": "deny",
}


class TerminalFrontend:
    def __init__(self, service: ConsentService, fd: int = 0, out: TextIO | None = None) -> None:
        self._service = service
        self._fd = fd
        self._out = out if out is not None else sys.stdout
        self._asking: list[Pending] = []
        self._buffer = b""
        self._reading = False

    @property
    def reading(self) -> bool:
        return self._reading

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        self._reading = True

    async def close(self) -> None:
        self._stop()

    # ConsentFrontend

    def prompt(self, pending: Pending) -> None:
        self._asking.append(pending)
        if len(self._asking) == 1:
            self._show(pending)
        else:
            self._say(_("(Another help request is waiting; answer the one above first.)"))

    def prompt_closed(self, session_id: str) -> None:
        head = self._asking[0].request.session_id if self._asking else None
        if not any(p.request.session_id == session_id for p in self._asking):
            return
        self._asking = [p for p in self._asking if p.request.session_id != session_id]
        self._say(
            _("The help request %(session)s was closed (answered elsewhere or expired).")
            % {"session": session_id}
        )
        if head == session_id and self._asking:
            self._show(self._asking[0])

    def active(self, grant: Grant) -> None:
        what = _(KIND_NAMES.get(grant.kind, grant.kind))
        self._say(
            _("Help session %(session)s is active (%(technician)s, %(what)s).")
            % {"session": grant.session_id, "technician": grant.technician, "what": what}
            + " "
            + _("Type e and Enter to end it.")
        )

    def ended(self, session_id: str) -> None:
        self._say(_("Help session %(session)s ended.") % {"session": session_id})

    # output

    def _show(self, pending: Pending) -> None:
        seconds = max(0, math.ceil(pending.deadline - time.monotonic()))
        self._say(
            "\n=== "
            + _("Help request %(session)s") % {"session": pending.request.session_id}
            + " ==="
        )
        self._say(pending.prompt_text())
        left = ngettext(
            "(%(seconds)d second to answer)", "(%(seconds)d seconds to answer)", seconds
        )
        self._say(self._choices(pending) + " " + left % {"seconds": seconds})

    @staticmethod
    def _choices(pending: Pending) -> str:
        if pending.request.kind == "screen":
            return _("Type a and Enter to allow help, v to allow view only, d to deny.")
        return _("Type a and Enter to allow help, d to deny.")

    def _say(self, text: str) -> None:
        try:
            self._out.write(plain(text) + "\n")
            self._out.flush()
        except (OSError, ValueError) as exc:  # the terminal is gone
            log.debug("terminal output failed: %s", exc)

    # input

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the terminal hung up
            log.debug("terminal input failed: %s", exc)
            data = b""
        if not data:
            log.info("the terminal closed: answer with the dialog or `allowhelp-agent allow`")
            self._stop()
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            self._line(line.decode(errors="replace"))
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""

    def _stop(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._fd)

    def _line(self, line: str) -> None:
        word = line.strip().lower()
        if self._asking:
            self._answer(self._asking[0], WORDS.get(word))
        elif word in ("e", "end"):
            ended = self._service.end()
            if ended:
                self._say(_("Ended: %(sessions)s") % {"sessions": ", ".join(ended)})
            else:
                self._say(_("No help session is running."))
        elif word:
            self._say(_("Nothing is waiting for an answer."))

    def _answer(self, pending: Pending, answer: Answer | None) -> None:
        if answer is None or (answer == "view" and pending.request.kind != "screen"):
            self._say(self._choices(pending))
            return
        session_id = pending.request.session_id
        self._asking.pop(0)
        try:
            self._service.decide(
                session_id, allow=answer != "deny", view_only=answer == "view", via="terminal"
            )
        except (ConsentRefused, NotConnected) as exc:
            self._say(_("Could not answer: %(error)s") % {"error": exc})
        else:
            if answer == "deny":  # an allowed one is announced by ``active``
                self._say(_("Denied."))
        if self._asking:
            self._show(self._asking[0])
