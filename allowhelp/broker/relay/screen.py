"""Relay one technician's screen WebSocket to one screen channel on the agent.

Binary frames carry the RFB stream both ways (noVNC's ``binary`` subprotocol).
Unlike the shell relay, this one reads the stream: ``rfb.ClientFilter`` drops
input on a view-only grant and refuses what it cannot parse, and
``rfb.ServerChecker`` vets the PC's handshake. Flow control holds end to end as
for the shell: a slow browser stops the channel being read, its window closes,
and the agent stops reading x11vnc.

The agent reports a screen that cannot start on the channel's stderr and exit
status (no DISPLAY, Wayland, x11vnc missing or failing): that text is kept
apart from the RFB bytes, bounded, and becomes the session's failure reason.
A screen that says nothing at all within ``HANDSHAKE_TIMEOUT`` fails too.

Every byte each way is recorded (``audit/rfb_recording.py``): what the PC
sends as the technician gets it, what the technician sends as the PC gets it,
with ``sender`` (the technician's user name) as who sent it; an invitee in
control mode adds their input messages (keys, pointer, clipboard: not their
viewer's handshake or update requests) to the session's one recording under
their own name (``input_only``); invitees attach only while the owner's
viewer is connected, so the PC's picture is being recorded
(``console/api/recorders.py``, ``InviteDesk.claim``). Recording costs
the hot path a frame head per chunk; the relay waits only when the recording's
writer falls far behind or a stopped recording is being audited.
"""

from __future__ import annotations

import asyncio
import logging

import asyncssh
from starlette.websockets import WebSocket

from allowhelp.broker.audit.rfb_recording import RfbRecorder
from allowhelp.broker.errors import (
    ConsoleBroke,
    ConsoleFrameTooLarge,
    ConsoleFrameUnsupported,
    RelayError,
)
from allowhelp.broker.model.session import Traffic
from allowhelp.broker.relay.inbox import ChannelInbox
from allowhelp.broker.relay.outcome import (
    ChannelSpec,
    Counters,
    Outcome,
    first_to_end,
    outcome_of,
)
from allowhelp.broker.relay.rfb import ClientFilter, RfbError, RfbTooLarge, ServerChecker

log = logging.getLogger(__name__)

SCREEN_WINDOW = 1024 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_FRAME = 256 * 1024
MAX_INPUT_FRAME = 512 * 1024
# GNOME and KDE ask the user in their own dialog before the portal engine can
# show anything (docs/wayland.md): a person reading it needs more than a few seconds.
HANDSHAKE_TIMEOUT = 90.0


class ScreenRelay:
    """One technician WebSocket ↔ one screen channel, until either side ends."""

    def __init__(
        self,
        websocket: WebSocket,
        recorder: RfbRecorder | None = None,
        *,
        view_only: bool,
        sender: str = "",
        input_only: bool = False,
    ) -> None:
        self._ws = websocket
        self._recorder = recorder
        self._sender = sender  # who the input on this socket is from, for the recording
        # An invitee's relay adds its input to the owner's recording, with its own
        # sender; the owner's relay records the PC's stream and seals the file.
        self._input_only = input_only
        self._view_only = view_only
        self._side = ChannelInbox(high=HIGH_WATER, low=LOW_WATER, what="screen sharer")
        self._client = ClientFilter(view_only=view_only, keep_inputs=input_only)
        self._server = ServerChecker()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        owned = recorder is not None and not input_only
        self.counters = Counters(recording=recorder.name if owned and recorder else None)

    @property
    def channel(self) -> ChannelSpec:
        return ChannelSpec("screen", SCREEN_WINDOW)

    def started_details(self) -> dict[str, object]:
        details: dict[str, object] = {"view_only": self._view_only}
        if self._recorder is not None:
            details["recording"] = self._recorder.name
        return details

    def factory(self) -> ChannelInbox:
        return self._side

    @property
    def dropped_input(self) -> int:
        return self._client.dropped

    async def run(self, chan: asyncssh.SSHClientChannel[bytes]) -> Outcome:
        """Pump both ways until one side ends or breaks; say how it ended."""
        self._chan = chan
        console_left, error = await first_to_end(
            self._browser_to_agent(chan), self._agent_to_browser(), self._handshake_watchdog()
        )
        self.stop()
        if self.dropped_input:
            log.info("screen relay view-only: dropped %d input events", self.dropped_input)
        return outcome_of("screen", console_left, error, self._why_channel_ended)

    def _why_channel_ended(self) -> Outcome:
        failure = self._side.failure()
        if failure is not None:
            return Outcome("error", RelayError(failure))
        if self._side.agent_lost:
            return Outcome("agent_lost")
        if not self._server.ready:
            return Outcome(
                "error", RelayError("the PC closed the screen before it showed anything")
            )
        return Outcome("user")  # the agent closes a granted channel when its user ends it

    async def _handshake_watchdog(self) -> None:
        await asyncio.sleep(HANDSHAKE_TIMEOUT)
        if not self._server.ready:
            who = "the PC's screen" if self._client.ready else "the screen handshake"
            raise RelayError(f"{who} did not finish within {HANDSHAKE_TIMEOUT:.0f} s")
        await asyncio.Event().wait()  # keep running: only the other two end the relay

    async def _agent_to_browser(self) -> None:
        while (data := await self._side.take(MAX_FRAME)) is not None:
            size = len(data)
            try:
                payload = self._server.feed(data)
            except RfbError as exc:
                raise RelayError(f"bad screen stream: {exc}") from exc
            self.counters.from_agent += size
            if payload:
                await self._record(payload, from_pc=True)
                await self._ws.send_bytes(payload)

    async def _record(self, data: bytes, *, from_pc: bool = False) -> None:
        """Hand bytes to the recording (the PC's, or this technician's with their
        name); wait only when it asks to (its writer far behind, or its stop not
        yet on the audit record)."""
        recorder = self._recorder
        if recorder is None or not data or (from_pc and self._input_only):
            return
        if from_pc:
            recorder.server(data)
        else:
            recorder.client(data, self._sender)
        if recorder.must_wait:
            try:
                await recorder.keep_up()
            except Exception as exc:
                raise RelayError("the recording stopped and that could not be audited") from exc

    async def _browser_to_agent(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                raise ConsoleFrameUnsupported("the console sent a text frame")
            if len(data) > MAX_INPUT_FRAME:
                raise ConsoleFrameTooLarge("the console sent a frame too large")
            try:
                forward = self._client.feed(data)
            except RfbTooLarge as exc:
                raise ConsoleFrameTooLarge(f"the console sent {exc}") from exc
            except RfbError as exc:
                raise ConsoleBroke(f"the console broke RFB: {exc}") from exc
            if forward:
                await self._record(self._client.take_inputs() if self._input_only else forward)
                await self._side.writable.wait()
                try:
                    chan.write(forward)
                except BrokenPipeError:  # the channel is going: its end says why
                    await asyncio.Event().wait()
                self.counters.to_agent += len(forward)

    def stop(self) -> Traffic:
        """Close the channel and seal the recording; safe to call more than once
        (the registry calls it too)."""
        self._side.drop()  # nothing more goes to the page: it could not be recorded now
        if self._chan is not None:
            self._chan.close()
        if self._recorder is not None and not self._input_only:
            self.counters.recording_sha256 = self._recorder.close()
        return self.counters.traffic()
