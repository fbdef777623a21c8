"""An invited technician's terminal WebSocket ↔ their own shell channel on the agent (#18).

The agent fans the shell's output out to every participant's channel
(``agent/participants.py``), so each participant has a channel of their own;
a participant's relay never ends the session, only their part in it.

Output: what an invitee's page is shown comes from the owner's relay, not from
their channel. The owner's relay records the shell's output and keeps each chunk
once it is in the recording (``scrollback.py``); an invitee's relay follows
that: first the shell's recent output (so their terminal starts where the
owner's is), then every chunk kept from that moment on. So an invitee never sees
output the recording may not hold, even behind a slow owner's page. Their
channel's own copy of the output is dropped as it comes (the agent must not
find them too slow for it: it closes a channel that falls 4 MiB behind); the
channel stays what the PC knows them by, and what carries a controller's keys.

Input: an ``observe`` participant's keystrokes and resizes are dropped here,
and dropped again by the agent (it does not trust the broker to). A
``control`` participant's keystrokes go through; only the owner sizes the
terminal, so every participant's resize is dropped.

The shortcut (``fastws.py``): a keystroke that arrives with nothing queued
before it is written to the channel (or, from an observer, dropped) in the
WebSocket protocol's callback; a kept chunk that comes while the output task
waits with nothing queued, once the catch-up is sent, goes to the browser's
transport in the owner's relay's step, when ``await send`` would not have
waited either. Everything else takes the tasks' path.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh
from starlette.websockets import WebSocket

from allowhelp.broker.errors import ConsoleFrameTooLarge, RelayError
from allowhelp.broker.model.session import Traffic
from allowhelp.broker.relay.fastws import EXTENSION, ShortcutWebSocketProtocol, write_now
from allowhelp.broker.relay.inbox import ChannelInbox
from allowhelp.broker.relay.outcome import (
    ChannelSpec,
    Counters,
    Outcome,
    first_to_end,
    outcome_of,
)
from allowhelp.broker.relay.scrollback import Follower, follow
from allowhelp.broker.relay.terminal import (
    HIGH_WATER,
    LOW_WATER,
    MAX_CONTROL,
    MAX_FRAME,
    SHELL_WINDOW,
)
from allowhelp.protocol.kinds import Kind

LAST_WORDS_WAIT = 2.0  # seconds a closed channel waits for the owner's last kept output


class ParticipantTerminalRelay:
    """One invitee's terminal, until they leave, are removed, or the session ends."""

    def __init__(
        self,
        websocket: WebSocket,
        kind: Kind,
        size: tuple[int, int],
        *,
        may_type: bool,
        session_id: str = "",
    ):
        self._ws = websocket
        self._session_id = session_id  # the shell joined: its recent output comes first
        self._kind: Kind = kind
        self._size = size
        self.may_type = may_type
        self.dropped_input = 0  # bytes an observer typed, not passed on
        self.counters = Counters()
        self._side = ChannelInbox(high=HIGH_WATER, low=LOW_WATER, what="shell")
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        shortcut = websocket.scope.get("extensions", {}).get(EXTENSION)
        self._shortcut = shortcut if isinstance(shortcut, ShortcutWebSocketProtocol) else None
        self._input_held = False  # a keystroke taken by the task waits for the channel
        self._follower: Follower | None = None  # the owner's relay's kept output (``_catch_up``)

    @property
    def channel(self) -> ChannelSpec:
        return ChannelSpec(self._kind, SHELL_WINDOW, ("xterm-256color", *self._size))

    def started_details(self) -> dict[str, object]:
        return {"may_type": self.may_type}

    def factory(self) -> ChannelInbox:
        return self._side

    async def run(self, chan: asyncssh.SSHClientChannel[bytes]) -> Outcome:
        self._chan = chan
        found = follow(self._session_id) if self._session_id else None
        if found is None:  # the owner's relay stopped: the session is ending
            self.stop()
            return Outcome("error", RelayError("the session's technician left the shell"))
        earlier, self._follower = found
        if self._shortcut is not None:
            self._shortcut.take_bytes = self._take_now
        self._side.show = self._drop_output  # the channel's copy: ``_drain``
        try:
            console_left, error = await first_to_end(
                self._from_browser(chan),
                self._catch_up(earlier, self._follower),
                self._drain(),
                self._cut_off(self._follower),
            )
        finally:
            self._unhook()
        self.stop()
        return outcome_of("participant terminal", console_left, error, self._why_channel_ended)

    async def _drain(self) -> None:
        """Drop the channel's copy of the output until the channel ends; then, if the
        owner's relay is ending too (the shell exited: the PC closes every channel),
        let the last output it recorded reach this page first, a moment at most."""
        while await self._side.take(MAX_FRAME) is not None:
            pass
        if self._follower is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._follower.shown_all.wait(), LAST_WORDS_WAIT)

    @staticmethod
    def _drop_output(data: bytes) -> bool:
        return True  # taken in the SSH session's callback: no task wakes for it

    @staticmethod
    async def _cut_off(follower: Follower) -> None:
        await follower.cut.wait()  # set, not polled: a page that reads nothing is stuck in send
        raise RelayError("too slow to follow the session")

    def _why_channel_ended(self) -> Outcome:
        failure = self._side.failure() if self._side.stderr else None
        if failure is not None:
            return Outcome("error", RelayError(failure))
        if self._side.agent_lost:
            return Outcome("agent_lost")
        return Outcome("user")  # the agent closed it: the user removed them, or the shell ended

    async def _catch_up(self, earlier: bytes, follower: Follower) -> None:
        """What the shell printed before this participant joined, then what comes,
        all of it once it is in the owner's relay's recording."""
        for start in range(0, len(earlier), MAX_FRAME):
            await self._ws.send_bytes(earlier[start : start + MAX_FRAME])
        if self._shortcut is not None:  # only now: the catch-up goes first
            follower.show = self._show_now
        while (payload := await follower.take()) is not None:
            for start in range(0, len(payload), MAX_FRAME):
                chunk = payload[start : start + MAX_FRAME]
                self.counters.from_agent += len(chunk)
                await self._ws.send_bytes(chunk)
        # cut off (``_cut_off`` says so), or the owner's relay stopped: the session is
        # ending, and its end stops this relay (as the PC closing the channel does)
        await asyncio.Event().wait()

    def _show_now(self, data: bytes) -> bool:
        """An echo just kept by the owner's relay (``Follower.feed``) while the task
        waits with nothing queued: sent at once if ``await send`` would not wait;
        else declined."""
        shortcut = self._shortcut
        if shortcut is None or len(data) > MAX_FRAME:
            return False
        try:
            shown = shortcut.send_bytes_now(data)
        except Exception:  # the socket is going: the task sends it and meets the error
            return False
        if shown:
            self.counters.from_agent += len(data)
        return shown

    def _take_now(self, data: bytes) -> bool:
        """A keystroke with nothing queued before it, in the WebSocket protocol's
        callback: dropped (an observer's) or written; declines what the task must
        handle (too large, the channel full or closing, a keystroke of the task's
        waiting)."""
        if len(data) > MAX_FRAME or self._input_held:
            return False
        if not self.may_type:
            self.dropped_input += len(data)
            return True
        if not write_now(self._chan, self._side.writable.is_set(), data):
            return False
        self.counters.to_agent += len(data)
        return True

    def _unhook(self) -> None:
        self._side.show = None
        if self._follower is not None:
            self._follower.show = None
        if self._shortcut is not None:
            self._shortcut.take_bytes = None

    async def _from_browser(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                if len(data) > MAX_FRAME:
                    raise ConsoleFrameTooLarge("the console sent an input frame too large")
                if not self.may_type:
                    self.dropped_input += len(data)
                    continue
                if not self._side.writable.is_set():
                    self._input_held = True  # what comes meanwhile queues behind it
                    try:
                        await self._side.writable.wait()
                    finally:
                        self._input_held = False
                chan.write(data)
                self.counters.to_agent += len(data)
            elif (text := message.get("text")) is not None and len(text) > MAX_CONTROL:
                raise ConsoleFrameTooLarge("the console sent a control message too large")
            # resize and other control: only the owner sizes the terminal

    def stop(self) -> Traffic:
        self._unhook()
        self._side.drop()  # the session ended or they left: nothing more goes to the page
        if self._follower is not None:
            self._follower.end()
        if self._chan is not None:
            self._chan.close()
        return self.counters.traffic()
