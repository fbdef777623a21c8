"""The desktop consent dialog: "Allow help" / "Deny" (and "Allow view only" for a screen).

A client of ``AgentService`` like the CLI: the click becomes
``service.decide(..., via="dialog")`` and nothing else. The window shows the
exact ``Pending.prompt_text()`` that goes into the audit record, disappears at
the consent deadline, and is killed as soon as the prompt closes elsewhere.
"""

from __future__ import annotations

import logging
import math
import time

from allowhelp.agent.consent import ConsentRefused, Grant, Pending
from allowhelp.agent.consentviews import ConsentService
from allowhelp.agent.frontends.process import WindowProcess, WindowSet
from allowhelp.agent.frontends.toolkit import Toolkit
from allowhelp.agent.service import NotConnected
from allowhelp.protocol.kinds import Kind

log = logging.getLogger(__name__)


class DialogFrontend:
    def __init__(self, service: ConsentService, toolkit: Toolkit) -> None:
        self._service = service
        self.toolkit = toolkit
        self.windows = WindowSet()

    def prompt(self, pending: Pending) -> None:
        request = pending.request
        seconds = math.ceil(pending.deadline - time.monotonic())
        window = self.toolkit.question(
            request.organisation, pending.prompt_text(), request.kind, seconds
        )
        session_id, kind = request.session_id, request.kind

        async def ask(process: WindowProcess) -> None:
            await self._ask(session_id, kind, process)

        self.windows.open(session_id, window, ask)
        log.info("session=%s consent dialog shown (%s)", session_id, self.toolkit.name)

    def prompt_closed(self, session_id: str) -> None:
        self.windows.close(session_id)

    def active(self, grant: Grant) -> None:
        """The indicator front-end shows running sessions."""

    def ended(self, session_id: str) -> None:
        self.windows.close(session_id)

    async def close(self) -> None:
        await self.windows.close_all()

    async def _ask(self, session_id: str, kind: Kind, process: WindowProcess) -> None:
        outcome = await process.run()
        self.windows.forget(session_id, process)
        if outcome is None:
            return
        answer = self.toolkit.answer(kind, outcome)
        if answer is None:
            log.info("session=%s the dialog closed without an answer", session_id)
            return
        try:
            self._service.decide(
                session_id, allow=answer != "deny", view_only=answer == "view", via="dialog"
            )
        except (ConsentRefused, NotConnected) as exc:
            log.warning("session=%s the dialog's answer was not used: %s", session_id, exc)
