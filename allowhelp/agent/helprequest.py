"""A help code asked of the broker (``request-help``): the request and the wait.

``service.py`` sends a ``HelpRequest`` with a fresh reference and waits here for
the broker's ``HelpCode`` or ``HelpRefused`` with that reference, at most
``HELP_TIMEOUT``; a lost control channel ends every wait (``NotConnected``).
Who asked which code is ``helpcodes.py``'s. ``service.py`` re-exports
``NotConnected``, where the front-ends have always caught it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _
from allowhelp.protocol.control import HelpCode, HelpRefused, HelpRequest, Message
from allowhelp.protocol.text import plain_text

HELP_TIMEOUT = 15.0


class NotConnected(AgentError):
    """The broker cannot be reached right now, so nothing can be sent to it."""


class HelpDeclined(AgentError):
    """The broker answered a help request with a refusal; the text says why."""


class HelpRequests:
    """The help requests sent and not answered yet, by their reference."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[HelpCode]] = {}

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    async def ask(self, send: Callable[[Message], None], message: str) -> HelpCode:
        ref = secrets.token_hex(8)
        future: asyncio.Future[HelpCode] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        send(HelpRequest(ref=ref, message=message[:500]))
        try:
            return await asyncio.wait_for(future, HELP_TIMEOUT)
        except asyncio.TimeoutError:
            raise NotConnected(_("the broker did not answer the help request in time")) from None
        finally:
            self._waiting.pop(ref, None)

    def answered(self, message: HelpCode | HelpRefused) -> None:
        future = self._waiting.pop(message.ref, None)
        if future is None or future.done():
            return
        if isinstance(message, HelpCode):
            future.set_result(message)
        else:
            reason = plain_text(message.reason, 200)
            future.set_exception(HelpDeclined(_("no help code: %(reason)s") % {"reason": reason}))

    def lost(self) -> None:
        """The control channel is gone: no answer will come."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NotConnected(_("the connection to the broker was lost")))
