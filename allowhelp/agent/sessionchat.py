"""The PC user's side of a session's chat, behind ``service.py``'s ``say`` and ``messages``.

Kept per session: whether its broker takes ``chat.message`` (an older one would
drop the tunnel for it), and whose it was once granted, so that its owner alone
reads the conversation after it ended. Both for the ``MAX_KEPT`` latest sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from allowhelp.agent.consent import ConsentRefused
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _
from allowhelp.agent.news import NewsLine, SessionNews
from allowhelp.protocol.control import MAX_CHAT, ChatMessage, Message
from allowhelp.protocol.text import plain_text

MAX_KEPT = 100
Sender = Callable[[Message], None]


def _keep(book: dict[str, int | None], session_id: str, value: int | None) -> None:
    book[session_id] = value
    while len(book) > MAX_KEPT:  # the oldest go first
        del book[next(iter(book))]


class SessionChat:
    """What the service knows of its sessions' chat, apart from the lines themselves
    (``news.py``'s ``SessionNews``)."""

    def __init__(self, news: SessionNews) -> None:
        self.news = news
        self._owners: dict[str, int | None] = {}  # sessions granted lately → whose
        self._chat_ok: dict[str, int | None] = {}  # sessions whose broker takes chat.message

    def offered(self, session_id: str) -> None:
        """The session's request said its broker takes chat."""
        _keep(self._chat_ok, session_id, None)

    def granted(self, session_id: str, owner: int | None) -> None:
        _keep(self._owners, session_id, owner)

    def say(
        self, session_id: str, text: str, sender: Callable[[], Callable[[Message], None]]
    ) -> NewsLine:
        """The user writes to the technician of ``session_id`` (running, the caller's)."""
        if session_id not in self._chat_ok:  # an older broker would drop the tunnel
            raise AgentError(_("the help desk's broker is too old for chat in this session"))
        clean = plain_text(text, MAX_CHAT + 1)
        if not clean:
            raise AgentError(_("the message is empty"))
        if len(clean) > MAX_CHAT:
            raise AgentError(_("a message is at most %(limit)s characters") % {"limit": MAX_CHAT})
        sender()(ChatMessage(session_id, clean))
        return self.news.add(NewsLine(session_id, "chat", "you", clean, time.time()))

    def messages(self, session_id: str, owner: int | None) -> list[NewsLine]:
        """The conversation of one of ``owner``'s sessions (running, or ended lately)."""
        if session_id not in self._owners or self._owners[session_id] != owner:
            raise ConsentRefused(_("no session %(session)s of yours") % {"session": session_id})
        return self.news.chat(session_id)
