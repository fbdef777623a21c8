"""Relay a technician's terminal WebSocket to a shell channel on the agent.

The broker never interprets the shell stream (it only records it). Flow
control holds end to end: when the WebSocket is slower than the shell, the
SSH channel stops being read, its window closes, and the agent stops reading
the PTY. Input has its own path, so Ctrl-C gets through a flood.

Binary frames carry terminal bytes both ways; text frames carry JSON control
from the page (``{"type": "resize", "cols": C, "rows": R}``).
"""

from __future__ import annotations

import logging

import asyncssh
from starlette.websockets import WebSocket

from allowhelp.broker.audit.recording import AsciicastRecorder
from allowhelp.broker.errors import ConsoleBroke, ConsoleFrameTooLarge, RelayError
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
from allowhelp.broker.relay.scrollback import drop_tail, keep_tail
from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.kinds import Kind

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_FRAME = 64 * 1024
# Output taken at once, recorded in one write, then sent as frames: one
# hand-over to the recording's writer thread per batch, not per frame.
RECORD_BATCH = 4 * MAX_FRAME
MAX_CONTROL = 4096
SHELL_WINDOW = 256 * 1024
MAX_COLS, MAX_ROWS = 1000, 500


def terminal_size(cols: int, rows: int) -> tuple[int, int]:
    """A size the PTY accepts, whatever the page asked for."""
    return min(max(cols, 2), MAX_COLS), min(max(rows, 1), MAX_ROWS)


class TerminalRelay:
    """One technician WebSocket ↔ one shell channel, until either side ends."""

    def __init__(
        self,
        websocket: WebSocket,
        recorder: AsciicastRecorder,
        size: tuple[int, int],
        kind: Kind = "shell",
        *,
        session_id: str = "",
    ):
        self._kind: Kind = kind  # "shell" or "admin-shell": the same bytes, its own channel
        self._ws = websocket
        self._recorder = recorder
        self._size = size
        self.counters = Counters(recording=recorder.path.name)
        self._side = ChannelInbox(high=HIGH_WATER, low=LOW_WATER, what="shell")
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        # The shell's recent output, for whoever joins it later (#18: relay/scrollback.py).
        self._session_id = session_id
        self._tail = keep_tail(session_id) if session_id else None  # fed by ``_keep``
        # uvicorn's protocol, when it is ours: keystrokes and echoes without a task
        # wake-up while nothing waits (fastws.py); else everything goes through ASGI
        shortcut = websocket.scope.get("extensions", {}).get(EXTENSION)
        self._shortcut = shortcut if isinstance(shortcut, ShortcutWebSocketProtocol) else None
        self._input_held = False  # a keystroke taken by the task waits for the channel
        self._unshown: bytes | None = None  # recorded by ``_show_now``, not yet shown
        self._unshown_kept = False  # ... and already in the scrollback (``_keep``)
        self._broke: Exception | None = None  # what ``_show_now`` met: the task raises it

    @property
    def channel(self) -> ChannelSpec:
        return ChannelSpec(self._kind, SHELL_WINDOW, ("xterm-256color", *self._size))

    def started_details(self) -> dict[str, object]:
        return {"cols": self._size[0], "rows": self._size[1], "recording": self._recorder.path.name}

    def factory(self) -> ChannelInbox:
        return self._side

    async def run(self, chan: asyncssh.SSHClientChannel[bytes]) -> Outcome:
        """Pump both ways; say why it ended (for the session's end record)."""
        self._chan = chan
        if self._shortcut is not None:
            self._shortcut.take_bytes = self._take_now
            self._side.show = self._show_now
        console_left, error = await first_to_end(
            self._browser_to_agent(chan), self._agent_to_browser()
        )
        self.stop()
        return outcome_of("terminal", console_left, error, self._why_channel_ended)

    def _why_channel_ended(self) -> Outcome:
        failure = self._side.failure() if self._side.stderr else None
        if failure is not None:
            return Outcome("error", RelayError(failure))
        if self._side.exit_status is not None:
            return Outcome("shell_exited")
        if self._side.agent_lost:
            return Outcome("agent_lost")
        return Outcome("user")  # the agent closes a granted channel when its user ends it

    async def _agent_to_browser(self) -> None:
        try:
            await self._pump_output()
        finally:
            self._unhook()

    async def _pump_output(self) -> None:
        while (payload := await self._side.take(RECORD_BATCH)) is not None:
            if self._broke is not None:
                raise self._broke
            if self._unshown is not None:  # before anything that came after it
                await self._recorded()
                if not self._unshown_kept:
                    self._keep(self._unshown)
                await self._ws.send_bytes(self._unshown)
                self._unshown = None
            if not payload:  # the nudge for it
                continue
            self._recorder.output(payload)
            if not self._recorder.on_disk:  # a keystroke's echo usually is, at once
                await self._recorded()
            self._keep(payload)
            self.counters.from_agent += len(payload)
            for start in range(0, len(payload), MAX_FRAME):
                await self._ws.send_bytes(payload[start : start + MAX_FRAME])

    def _show_now(self, data: bytes) -> bool:
        """An echo while the task waits for output with nothing queued, in the SSH
        session's callback: recorded, then (once on disk, as ``_pump_output``)
        sent. Declines (False) what the task should take in turn."""
        shortcut = self._shortcut
        if (
            shortcut is None
            or self._unshown is not None
            or self._broke is not None
            or len(data) > MAX_FRAME
            or not self._recorder.on_disk
            or not shortcut.can_send_now()
        ):
            return False
        try:
            self._recorder.output(data)
            on_disk = self._recorder.on_disk
            if on_disk:  # kept before it is shown, as ``_pump_output`` does
                self._keep(data)
        except Exception as exc:  # not into asyncssh's callback: it would end the whole tunnel
            self._broke = exc
            self._side.nudge()
            return True
        shown: bool = on_disk
        try:  # ``can_send_now`` held above, and recording touches no socket
            if shown:
                shortcut.frame_now(data)
        except Exception:  # the socket is going: the task sends it and meets the error
            shown = False
        self.counters.from_agent += len(data)
        if not shown:  # the task shows it once it is in the file
            self._unshown, self._unshown_kept = data, on_disk
            self._side.nudge()
        return True

    def _keep(self, data: bytes) -> None:
        """Output in the recording, kept for whoever joins the shell later (just before
        the owner sees it): a joiner never sees what the recording may not hold
        (relay/scrollback.py)."""
        if self._tail is not None:
            try:
                self._tail.add(data)
            except Exception as exc:
                raise RelayError(f"the shell's output could not be kept ({exc!r})") from exc

    def _take_now(self, data: bytes) -> bool:
        """A keystroke that came with nothing queued before it, in the WebSocket
        protocol's callback; declines (False) what the task must handle (too
        large, the channel full or closing, a keystroke of the task's waiting)."""
        if (
            self._input_held
            or len(data) > MAX_FRAME
            or not write_now(self._chan, self._side.writable.is_set(), data)
        ):
            return False
        self.counters.to_agent += len(data)
        return True

    def _unhook(self) -> None:
        """Everything through the task from now on (the relay is ending)."""
        self._side.show = None
        if self._shortcut is not None:
            self._shortcut.take_bytes = None

    async def _recorded(self) -> None:
        """What the technician is about to see is in the recording file first; or
        the recording has stopped, and that is on the audit record (if it cannot
        be, the shell ends: no unrecorded output goes out unaudited)."""
        try:
            await self._recorder.flushed()
        except Exception as exc:
            raise RelayError("the recording stopped and that could not be audited") from exc

    async def _browser_to_agent(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        try:
            await self._pump_input(chan)
        finally:
            self._unhook()

    async def _pump_input(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                if len(data) > MAX_FRAME:
                    raise ConsoleFrameTooLarge("the console sent an input frame too large")
                if not self._side.writable.is_set():
                    self._input_held = True  # what comes meanwhile queues behind it
                    try:
                        await self._side.writable.wait()
                    finally:
                        self._input_held = False
                chan.write(data)
                self.counters.to_agent += len(data)
            elif message.get("text") is not None:
                self._control(chan, message["text"])

    def _control(self, chan: asyncssh.SSHClientChannel[bytes], text: str) -> None:
        try:
            if len(text) > MAX_CONTROL:
                raise ProtocolError(f"over {MAX_CONTROL} characters")
            command = parse_json(text.encode(), "the control message")
            if not isinstance(command, dict) or command.get("type") != "resize":
                raise ProtocolError("not a resize")
            cols, rows = terminal_size(int(command["cols"]), int(command["rows"]))
        except (ProtocolError, ValueError, KeyError, TypeError, OverflowError) as exc:
            raise ConsoleBroke(f"bad control message: {exc}") from exc
        chan.change_terminal_size(cols, rows)
        self._recorder.resize(cols, rows)

    def stop(self) -> Traffic:
        """Close the channel and seal the recording; safe to call more than once.

        The digest is of everything queued for the file; ``sealed_traffic``
        awaits the writer and gives the digest of what is on disk."""
        self._unhook()
        self._side.drop()  # nothing more is shown: it could not be recorded now
        if self._chan is not None:
            self._chan.close()
        if self._tail is not None:
            drop_tail(self._session_id, self._tail)
        self.counters.recording_sha256 = self._recorder.close()
        return self.counters.traffic()
