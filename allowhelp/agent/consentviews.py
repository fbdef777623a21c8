"""What the consent front-ends see of the agent (``service.py`` re-exports both): the
front-end the service drives, and the service a front-end answers through
(``AgentService`` itself, or a session helper's stand-in, ``helper.py``)."""

from __future__ import annotations

from typing import Protocol

from allowhelp.agent.consent import Grant, Pending
from allowhelp.agent.news import SessionNews
from allowhelp.protocol.kinds import Via


class ConsentFrontend(Protocol):
    """A way to show prompts to the person at the PC (dialog, terminal, ...)."""

    def prompt(self, pending: Pending) -> None: ...

    def prompt_closed(self, session_id: str) -> None: ...

    def active(self, grant: Grant) -> None: ...

    def ended(self, session_id: str) -> None: ...


class _Organisation(Protocol):
    @property
    def organisation(self) -> str: ...


class _Grants(Protocol):
    def grants(self, owner: int | None = None) -> list[Grant]: ...


class ConsentService(Protocol):
    """What the front-ends use: ``AgentService`` itself, or in a session helper its
    stand-in that forwards each answer to the machine service (``agent/helper.py``)."""

    @property
    def config(self) -> _Organisation: ...

    @property
    def gate(self) -> _Grants: ...

    @property
    def news(self) -> SessionNews: ...

    def decide(self, session_id: str, *, allow: bool, view_only: bool, via: Via) -> object: ...

    def end(self, session_id: str | None = None) -> list[str]: ...

    def say(self, session_id: str, text: str) -> object: ...
