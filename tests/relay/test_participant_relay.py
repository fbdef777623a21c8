"""An invitee's terminal relay, without sockets: the broker's own drop of an
observer's keys and of every invitee's resize (the agent drops them again)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, cast

import asyncssh
from starlette.websockets import WebSocket

from allowhelp.broker.relay.participant import ParticipantTerminalRelay


class Browser:
    """What the relay reads from a page: these frames, then the page leaves."""

    scope: ClassVar[dict[str, Any]] = {}  # served by no protocol of ours: no shortcut

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self._frames = [*frames, {"type": "websocket.disconnect"}]

    async def receive(self) -> dict[str, Any]:
        return self._frames.pop(0)


class Channel:
    def __init__(self) -> None:
        self.written = b""
        self.sizes: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def change_terminal_size(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))


def typed(may_type: bool) -> tuple[ParticipantTerminalRelay, Channel]:
    frames: list[dict[str, Any]] = [
        {"type": "websocket.receive", "bytes": b"rm -rf ~\r"},
        {"type": "websocket.receive", "text": json.dumps({"type": "resize", "cols": 9, "rows": 9})},
        {"type": "websocket.receive", "bytes": b"ls\r"},
    ]
    relay = ParticipantTerminalRelay(
        cast(WebSocket, Browser(frames)), "shell", (80, 24), may_type=may_type
    )
    chan = Channel()
    pump = relay._from_browser(cast("asyncssh.SSHClientChannel[bytes]", chan))
    asyncio.run(pump)
    return relay, chan


def test_an_observers_keys_and_resizes_stop_at_the_broker() -> None:
    relay, chan = typed(may_type=False)
    assert chan.written == b"" and chan.sizes == []
    assert relay.dropped_input == len(b"rm -rf ~\r") + len(b"ls\r")
    assert relay.started_details() == {"may_type": False}


def test_a_controllers_keys_go_through_and_only_the_owner_resizes() -> None:
    relay, chan = typed(may_type=True)
    assert chan.written == b"rm -rf ~\rls\r" and chan.sizes == []
    assert relay.counters.to_agent == len(chan.written)
