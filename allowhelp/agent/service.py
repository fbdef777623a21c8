"""The agent's one place where consent is asked, decided and ended.

The broker's control channel, the desktop dialog, the terminal prompt and the
local control socket (CLI) are all clients of this object: there is no second
path to a grant. Each decision goes to the broker as the exact prompt text,
how it was given and how long the user took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.consent import ConsentGate, ConsentRefused, Decision
from allowhelp.agent.consentviews import ConsentFrontend
from allowhelp.agent.helpcodes import AskedHelp
from allowhelp.agent.helprequest import HELP_TIMEOUT, HelpRequests, NotConnected
from allowhelp.agent.i18n import _
from allowhelp.agent.news import NewsLine, SessionNews
from allowhelp.agent.participants import ParticipantHub
from allowhelp.agent.peers import KnownNodes
from allowhelp.agent.sessionchat import SessionChat
from allowhelp.protocol.control import (
    ChatMessage,
    ConsentDecision,
    ConsentRequest,
    DoorbellKey,
    FileTransfer,
    Hello,
    HelpCode,
    HelpRefused,
    JobRun,
    Message,
    NodesList,
    SessionEnd,
)
from allowhelp.protocol.kinds import EndReason, Via
from allowhelp.protocol.text import digits_of, format_code, plain_text

if TYPE_CHECKING:
    from allowhelp.agent.inventory import InventoryReporter
    from allowhelp.agent.jobs import JobKeeper
    from allowhelp.agent.woken import WokenFiles

__all__ = ["AgentService", "NotConnected", "Sender", "SignedIn"]

log = logging.getLogger(__name__)

Sender = Callable[[Message], None]
SignedIn = Callable[[], "int | None"]


class AgentService:
    """``signed_in`` makes this the machine service's logic (``run --system``): it
    says whose request a new one is (a uid), or None when nobody is signed in;
    each request then belongs to that uid alone. Without it (per-user agent)
    there is one user and no owner, and an admin shell is refused."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        signed_in: SignedIn | None = None,
        hello: Callable[[], Hello] | None = None,
    ) -> None:
        self.config = config
        self.gate = ConsentGate()
        self.frontends: list[ConsentFrontend] = []
        self.signed_in = signed_in
        self._hello = hello
        self._send: Sender | None = None
        self._help = HelpRequests()  # sent, waiting for the broker's code (helprequest.py)
        # Who asked for each help code (the machine service keeps them in its folder)
        self.asked_help = AskedHelp()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Fleet jobs (the machine service with jobs.py): apart from the gate.
        self.jobs: JobKeeper | None = None
        self.inventory: InventoryReporter | None = None  # the machine service's, after hello
        self.news = SessionNews()  # chat and file transfers of running sessions
        self.participants = ParticipantHub()  # invitees who joined a shell (#18)
        self.chat = SessionChat(self.news)  # the user's side of it (sessionchat.py)
        self.nodes: KnownNodes | None = None  # the broker nodes to fail over to (tunnel.py)
        # Started by the doorbell (``--idle woken``): where its key and the last Hello
        # are saved (``woken.py``); None in tunnel mode.
        self.doorbell: WokenFiles | None = None
        self._linked = asyncio.Event()  # the control channel is up (``attach``)

    @property
    def connected(self) -> bool:
        return self._send is not None

    @property
    def system(self) -> bool:
        return self.signed_in is not None

    def busy(self) -> bool:
        """Somebody is being helped: a prompt waits, a session is granted or a job runs."""
        running = self.jobs is not None and self.jobs.running
        return running or bool(self.gate.pending()) or bool(self.gate.grants())

    def hello(self) -> Hello | None:
        """The Hello this service sends: the machine service's, or the per-user agent's
        (``hello.current_hello`` with its folder, ``runner.py``); None: none to send."""
        return self._hello() if self._hello is not None else None

    def say_hello(self) -> None:
        """Who is signed in changed: tell the broker (its machine list shows it)."""
        hello = self.hello()
        if self._send is not None and hello is not None:
            self._send(self.stamp_hello(hello))

    def stamp_hello(self, hello: Hello) -> Hello:
        """The Hello as sent (woken by a doorbell: ``WokenFiles.stamp``)."""
        return hello if self.doorbell is None else self.doorbell.stamp(hello)

    @property
    def help_waiting(self) -> bool:
        """A ``request-help`` waits for the broker's code."""
        return self._help.waiting

    # the broker side

    def attach(self, send: Sender) -> None:
        self._send = send
        self._linked.set()
        if self.jobs is not None:
            self.jobs.attach(send)
        if self.inventory is not None:
            self.inventory.attach(send)

    def detach(self, send: Sender) -> None:
        """The control channel is gone: nothing granted may outlive the tunnel."""
        if self._send != send:  # bound methods: equal, not identical
            return
        self._send = None
        self._linked.clear()
        if self.jobs is not None:
            self.jobs.attach(None)
        if self.inventory is not None:
            self.inventory.attach(None)
        for session_id in [p.request.session_id for p in self.gate.pending()]:
            self._close_prompt(session_id)
        for session_id in self.gate.revoke_all():
            self._notify_ended(session_id)
        self._help.lost()

    def on_message(self, message: Message) -> None:
        if isinstance(message, ConsentRequest):
            self._on_request(message)
        elif isinstance(message, SessionEnd):
            self._close_prompt(message.session_id)
            if self._revoke(message.session_id):
                log.info("session=%s ended by the broker (%s)", message.session_id, message.reason)
        elif isinstance(message, (HelpCode, HelpRefused)):
            self._help.answered(message)
        elif isinstance(message, DoorbellKey) and self.doorbell is not None:
            self.doorbell.key_received(message.token)
        elif isinstance(message, NodesList) and self.nodes is not None:
            self.nodes.learned(message)
        elif isinstance(message, JobRun) and self.jobs is not None:
            self.jobs.received(message)
        elif isinstance(message, (ChatMessage, FileTransfer)):
            if any(g.session_id == message.session_id for g in self.gate.grants()):
                self.news.from_broker(message)
            else:
                log.warning("ignored %s for a session that is not running", message.type)
        else:
            log.warning("ignored an unexpected %s from the broker", message.type)

    def _on_request(self, request: ConsentRequest) -> None:
        # The broker cleans these too; a stolen broker key would not.
        request = replace(
            request,
            organisation=plain_text(request.organisation, 100),
            technician=plain_text(request.technician, 100),
            reason=plain_text(request.reason, 500),
            phrase=plain_text(request.phrase, 100),
            help_code=plain_text(request.help_code, 20),
            username=plain_text(request.username, 64),
        )
        owner, refusal = self._owner_for(request)
        code = digits_of(request.help_code)  # shown as this PC reads it, or not at all
        shown = bool(code) and self.asked_help.said_to(code, owner, shared=self.system)
        if request.help_code and not shown:
            log.warning("session=%s: its help code was not asked by this user", request.session_id)
        request = replace(request, help_code=format_code(code) if shown else "")
        if refusal is not None:
            log.warning("session=%s refused at once: %s", request.session_id, refusal)
            if self._send is not None:
                self._send(SessionEnd(session_id=request.session_id, reason=refusal))
            return
        if request.chat:
            self.chat.offered(request.session_id)
        try:
            pending = self.gate.ask(request, owner)
        except ConsentRefused as exc:
            log.warning("session=%s %s", request.session_id, exc)
            if request.joins and self._send is not None:  # the broker stops waiting
                self._send(SessionEnd(session_id=request.session_id, reason="error"))
            return
        log.info("session=%s consent asked by %s", request.session_id, request.technician)
        loop = asyncio.get_running_loop()
        self._timers[request.session_id] = loop.call_later(
            request.timeout, self._expire, request.session_id
        )
        for frontend in self.frontends:
            frontend.prompt(pending)

    def _owner_for(self, request: ConsentRequest) -> tuple[int | None, EndReason | None]:
        """Whose request this is, or why nobody can be asked (said at once,
        not after the consent timeout)."""
        if self.signed_in is None:
            if request.kind == "admin-shell":
                return None, "unsupported"  # a per-user agent has no root to give
            return None, None
        owner = self.signed_in()
        return (owner, None) if owner is not None else (None, "nobody_signed_in")

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        if session_id in self.gate.expire():
            log.info("session=%s consent request expired unanswered", session_id)
        self._close_prompt(session_id)

    def _close_prompt(self, session_id: str) -> None:
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        for frontend in self.frontends:
            frontend.prompt_closed(session_id)

    def _revoke(self, session_id: str) -> bool:
        """End a grant and the invitations into it; the front-ends hear of each."""
        for waiting in self.gate.pending():
            if waiting.request.joins == session_id:
                self._close_prompt(waiting.request.session_id)
        ended = self.gate.revoke_with_members(session_id)
        for sid in ended:
            self._notify_ended(sid)
        return session_id in ended

    def _notify_ended(self, session_id: str) -> None:
        for frontend in self.frontends:
            frontend.ended(session_id)

    def _sender(self) -> Sender:
        if self._send is None:
            raise NotConnected(_("not connected to the broker right now; try again in a moment"))
        return self._send

    # the user side: every front-end calls these

    def decide(
        self,
        session_id: str,
        *,
        allow: bool,
        view_only: bool,
        via: Via,
        owner: int | None = None,
    ) -> Decision:
        send = self._sender()
        decision = self.gate.decide(
            session_id, allow=allow, view_only=view_only, via=via, owner=owner
        )
        self._close_prompt(session_id)
        send(
            ConsentDecision(
                session_id=decision.session_id,
                granted=decision.granted,
                view_only=decision.view_only,
                via=decision.via,
                elapsed=decision.elapsed,
                prompt=decision.prompt,
            )
        )
        said = "allowed" if allow else "denied"
        log.info("session=%s %s by the user via %s", session_id, said, via)
        if allow:
            grant = next(g for g in self.gate.grants() if g.session_id == session_id)
            self.chat.granted(session_id, grant.owner)
            for frontend in self.frontends:
                frontend.active(grant)
        return decision

    def release(self, session_id: str) -> None:
        """A granted channel closed on its own (shell exited, broker closed it)."""
        self._revoke(session_id)

    def end(self, session_id: str | None = None, owner: int | None = None) -> list[str]:
        """The user ends one session, or all (of ``owner``'s, when given);
        channels close before this returns."""
        grants = self.gate.grants(owner)
        live = {g.session_id for g in grants}
        # All: the sessions; the invitations into them end with them.
        targets = (
            [session_id] if session_id else sorted(g.session_id for g in grants if not g.joins)
        )
        if session_id and session_id not in live:
            raise ConsentRefused(_("no running session %(session)s") % {"session": session_id})
        for sid in targets:
            # Tell the broker first, so it records "user" before it sees channels close.
            if self._send is not None:
                self._send(SessionEnd(session_id=sid, reason="user"))
            self._revoke(sid)
            log.info("session=%s ended by the user", sid)
        return targets

    def owner_gone(self, owner: int, reason: EndReason = "signed_out") -> list[str]:
        """``owner`` has no session helper left (signed out, helper died): nobody
        can answer their requests or end their sessions any more, so all end now."""
        gone = [p.request.session_id for p in self.gate.pending(owner)]
        gone += [g.session_id for g in self.gate.grants(owner)]
        for sid in gone:
            if self._send is not None:
                self._send(SessionEnd(session_id=sid, reason=reason))
            self._close_prompt(sid)
            self._revoke(sid)
            log.info("session=%s ended: uid %d has no session helper any more", sid, owner)
        return gone

    def say(self, session_id: str, text: str, owner: int | None = None) -> NewsLine:
        """The user writes to the technician of one of their running sessions."""
        if not any(g.session_id == session_id for g in self.gate.grants(owner)):
            raise ConsentRefused(_("no running session %(session)s") % {"session": session_id})
        return self.chat.say(session_id, text, self._sender)

    def messages(self, session_id: str, owner: int | None = None) -> list[NewsLine]:
        """The conversation of one of the caller's sessions (running, or ended lately)."""
        return self.chat.messages(session_id, owner)

    async def request_help(self, message: str, owner: int | None = None) -> HelpCode:
        code = await self._help_code(message)
        self.asked_help.remember(digits_of(code.code), owner, code.expires_in)
        return code

    async def _help_code(self, message: str) -> HelpCode:
        if self._send is None and self.doorbell is not None:
            # woken by the doorbell for this very request: its tunnel is on its way
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._linked.wait(), HELP_TIMEOUT)
        return await self._help.ask(self._sender(), message)
