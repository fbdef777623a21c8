"""Who else takes part in a session's end, for the session book (``book.py``).

Other rooms register here at start-up: what they add to an end record (the chat
transcript's digest), what else stops before it (invitees, #18), who hears of a
session that is over (the report for the ticket system), whether an owed end may
still be written (several nodes), and who hears of one let go instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from allowhelp.broker.errors import BrokerError
from allowhelp.broker.model.session import Session, Traffic

log = logging.getLogger(__name__)

EndDetails = Callable[[str], Awaitable[Mapping[str, object]]]
FinalListener = Callable[[Session], None]
# Who hears that a session's own technician opened it (its first relay attached):
# its invitees' pages, which wait for that (#18).
AttachListener = Callable[[Session], None]
# Who else stops access when a session ends, before its end record (its invitees,
# #18); what they return joins the record's traffic (a recording they opened).
EndingHook = Callable[[str], Awaitable[Traffic]]
# Whether this process may write the end record it owes for a session it stopped while
# the log was away: False when another broker node has ended it meanwhile
# (``node/cluster.py``); ``AuditUnavailable`` when that cannot be known yet.
LateEndGuard = Callable[[str], Awaitable[bool]]
# Who hears of a session let go without an end record here (another node wrote its
# end while this one was cut off): what they keep of it goes (its invitations).
LetGoListener = Callable[[str], None]


class BookHooks:
    """The registered hooks and listeners, and calling them; none may hold up an end."""

    def __init__(self) -> None:
        self._end_details: list[EndDetails] = []
        self._final_listeners: list[FinalListener] = []
        self._ending_hooks: list[EndingHook] = []
        self._late_end_guard: LateEndGuard | None = None
        self._let_go_listeners: list[LetGoListener] = []
        self._attach_listeners: list[AttachListener] = []

    def add_end_details(self, hook: EndDetails) -> None:
        self._end_details.append(hook)

    def on_final(self, listener: FinalListener) -> None:
        self._final_listeners.append(listener)

    def on_attach(self, listener: AttachListener) -> None:
        """Call ``listener`` when a session's own technician opens it (a relay attached)."""
        self._attach_listeners.append(listener)

    def before_end(self, hook: EndingHook) -> None:
        """Call ``hook`` when a session ends, after its relays stop, before its record."""
        self._ending_hooks.append(hook)

    def guard_late_ends(self, guard: LateEndGuard) -> None:
        """Ask ``guard`` before writing an owed end record (several nodes, one chain)."""
        self._late_end_guard = guard

    def on_let_go(self, listener: LetGoListener) -> None:
        """Call ``listener`` with a session's id when its owed end is let go: another
        node recorded the end (its final listeners, the report, are that node's)."""
        self._let_go_listeners.append(listener)

    async def _more_end_details(self, session_id: str) -> dict[str, object]:
        more: dict[str, object] = {}
        for hook in self._end_details:
            try:
                more.update(await hook(session_id))
            except BrokerError as exc:  # the store cannot say: the end is still recorded
                log.error("session=%s: end details missing: %s", session_id, exc)
        return more

    async def _stop_others(self, session_id: str) -> Traffic:
        """The ending hooks' part: their access stops before the end record too."""
        traffic = Traffic()
        for hook in self._ending_hooks:
            try:
                traffic += await hook(session_id)
            except Exception:  # a hook's failure must not hold an end up
                log.exception("session=%s: stopping what else it serves failed", session_id)
        return traffic

    def _tell_final(self, session: Session) -> None:
        for listener in self._final_listeners:
            try:
                listener(session)
            except Exception:  # a listener's failure must not undo an end
                log.exception("session=%s: a listener of its end failed", session.id)

    def _tell_attached(self, session: Session) -> None:
        for listener in self._attach_listeners:
            try:
                listener(session)
            except Exception:  # a listener's failure must not keep the technician out
                log.exception("session=%s: a listener of its opening failed", session.id)

    def _let_go(self, session_id: str) -> None:
        for listener in self._let_go_listeners:
            try:
                listener(session_id)
            except Exception:  # a listener's failure must not keep the session here
                log.exception("session=%s: a listener of its letting go failed", session_id)
