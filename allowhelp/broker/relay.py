"""Relay bytes between a technician's WebSocket and an SSH channel to the agent.

The broker never interprets the shell stream (it only records it). Flow
control holds end to end: when the WebSocket is slower than the shell, the
SSH channel stops being read, its window closes, and the agent stops reading
the PTY. Input has its own path, so Ctrl-C gets through a flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import asyncssh
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from allowhelp.protocol.control import EndReason
from allowhelp.protocol.text import plain_text

from .recording import AsciicastRecorder

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_FRAME = 64 * 1024
MAX_CONTROL = 4096
SHELL_WINDOW = 256 * 1024
MAX_STDERR = 4096


class ChannelInbox(asyncssh.SSHClientSession[bytes]):
    """The agent's side of one channel: data queued for the browser, stderr kept apart.

    Reading stops above ``high`` queued bytes and resumes below ``low``: that
    is what makes a slow browser slow the PC down instead of filling memory.
    The agent reports a channel that cannot start on stderr and exit status;
    that text never reaches the browser as data and becomes the failure reason.
    """

    def __init__(self, *, high: int, low: int, what: str) -> None:
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queued = 0
        self.stderr = bytearray()
        self.exit_status: int | None = None
        self.closed_by: Exception | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._high, self._low, self._what = high, low, what

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data[: max(0, MAX_STDERR - len(self.stderr))]
            return
        self.outbox.put_nowait(data)
        self.queued += len(data)
        if self.queued > self._high and self.chan is not None:
            self.chan.pause_reading()

    async def take(self, limit: int) -> bytes | None:
        """Everything queued, up to about ``limit`` bytes in one frame; None at the end."""
        data = await self.outbox.get()
        if data is None:
            return None
        chunks, size = [data], len(data)
        while size < limit and not self.outbox.empty():
            more = self.outbox.get_nowait()
            if more is None:
                self.outbox.put_nowait(None)
                break
            chunks.append(more)
            size += len(more)
        self.queued -= size
        if self.queued < self._low and self.chan is not None:
            self.chan.resume_reading()
        return b"".join(chunks)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_by = exc
        self.writable.set()
        self.outbox.put_nowait(None)

    @property
    def agent_lost(self) -> bool:
        return isinstance(self.closed_by, (asyncssh.ConnectionLost, asyncssh.DisconnectError))

    def failure(self) -> str | None:
        """What the agent said went wrong, if anything."""
        text = " ".join(
            plain_text(line, 300) for line in self.stderr.decode("utf-8", "replace").splitlines()
        ).strip()
        text = text.removeprefix("allowhelp:").strip()
        if text:
            return text[:300]
        if self.exit_status not in (None, 0) and self.queued == 0 and not self.outbox.qsize():
            return f"the {self._what} stopped (status {self.exit_status})"
        return None


@dataclass
class RelayStats:
    """What the session's end record says about the relay: bytes and recording."""

    to_agent: int = 0
    from_agent: int = 0
    recording: str | None = None
    recording_sha256: str | None = None


class TerminalRelay:
    """One technician WebSocket ↔ one shell channel, until either side ends."""

    def __init__(self, websocket: WebSocket, recorder: AsciicastRecorder) -> None:
        self._ws = websocket
        self._recorder = recorder
        self.traffic = RelayStats(recording=recorder.path.name)
        self._side = ChannelInbox(high=HIGH_WATER, low=LOW_WATER, what="shell")
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.end_reason: EndReason | None = None
        self.failure: str | None = None

    def factory(self) -> ChannelInbox:
        return self._side

    async def run(self, chan: asyncssh.SSHClientChannel[bytes]) -> EndReason:
        """Pump both ways; return why it ended (for the session's end record)."""
        self._chan = chan
        down = asyncio.create_task(self._agent_to_browser())
        up = asyncio.create_task(self._browser_to_agent(chan))
        done, pending = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.stop()
        if self.end_reason is not None:
            return self.end_reason
        return "technician" if up in done else self._why_channel_ended()

    def _why_channel_ended(self) -> EndReason:
        self.failure = self._side.failure() if self._side.stderr else None
        if self.failure is not None:
            return "error"
        if self._side.exit_status is not None:
            return "shell_exited"
        if self._side.agent_lost:
            return "agent_lost"
        return "user"  # the agent closes a granted channel when its user ends it

    async def _agent_to_browser(self) -> None:
        while (payload := await self._side.take(MAX_FRAME)) is not None:
            self._recorder.output(payload)
            self.traffic.from_agent += len(payload)
            await self._ws.send_bytes(payload)

    async def _browser_to_agent(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                if len(data) > MAX_FRAME:
                    await self._refuse(1009, "input frame too large")
                    return
                await self._side.writable.wait()
                chan.write(data)
                self.traffic.to_agent += len(data)
            elif message.get("text") is not None and not await self._control(chan, message["text"]):
                return

    async def _control(self, chan: asyncssh.SSHClientChannel[bytes], text: str) -> bool:
        try:
            if len(text) > MAX_CONTROL:
                raise ValueError("control message too large")
            command = json.loads(text)
            if not isinstance(command, dict) or command.get("type") != "resize":
                raise ValueError("unknown control message")
            cols, rows = int(command["cols"]), int(command["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            await self._refuse(1008, f"bad control message: {exc}"[:120])
            return False
        cols, rows = min(max(cols, 2), 1000), min(max(rows, 1), 500)
        chan.change_terminal_size(cols, rows)
        self._recorder.resize(cols, rows)
        return True

    async def _refuse(self, code: int, reason: str) -> None:
        self.end_reason = "technician"
        log.warning("terminal relay closed: %s", reason)
        if self._ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self._ws.close(code, reason)

    def stop(self) -> RelayStats:
        """Close the channel and seal the recording; safe to call more than once."""
        if self._chan is not None:
            self._chan.close()
        self.traffic.recording_sha256 = self._recorder.close()
        return self.traffic
