"""An invitee's terminal relay (``relay/participant.py``): what their page shows is
what the owner's relay kept once it was in the recording (``relay/scrollback.py``),
never their own channel's copy; keystrokes written to (or, from an observer,
dropped before) the channel in the WebSocket protocol's callback and kept output
sent in the owner's relay's step, while nothing waits; the catch-up first; order
kept; a page that reads nothing is cut off and never holds the owner back.

Real parts: uvicorn serving a starlette app on 127.0.0.1 with the console's
WebSocket protocol, a real asyncssh server whose shell is ``cat`` (each channel
its own), the owner's real relay and recorder, real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from catshellkit import cat_over_ssh
from shortcutkit import (
    KEYS,
    CountedShortcuts,
    Counting,
    echoed,
    record_log,
    recorded_length,
    serving,
    shown_lengths,
)
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from allowhelp.broker.audit.recording import AsciicastRecorder, RecordingLimits
from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.relay.participant import ParticipantTerminalRelay
from allowhelp.broker.relay.scrollback import FOLLOW_BACKLOG, Scrollback, drop_tail, keep_tail
from allowhelp.broker.relay.terminal import TerminalRelay


class Page:
    """Delegates to the transport; logs what is written to it, under the page's path."""

    def __init__(self, transport: Any, path: str) -> None:
        self._transport, self._path = transport, path

    def write(self, data: bytes) -> None:
        Counting.log.append((self._path, bytes(data)))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Pages(CountedShortcuts):
    made: ClassVar[list[Any]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.transport = Page(self.transport, f"page{len(Pages.made) - 1}")  # type: ignore[assignment]


@dataclass
class Stack:
    port: int
    relays: list[ParticipantTerminalRelay] = field(default_factory=list)
    owners: list[TerminalRelay] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@asynccontextmanager
async def stack(folder: Path, may_type: bool) -> AsyncIterator[Stack]:
    """``/o``: the owner's relay of shell ``s``, recorded in ``folder``; ``/p``: an
    invitee's relay on ``s``. Each has a ``cat`` of its own: the invitee's echoes
    are their channel's copy, which must never reach their page."""
    closing = contextlib.AsyncExitStack()  # the cat server and its client, last
    ssh = await closing.enter_async_context(cat_over_ssh())
    made = Stack(0)

    async def owner(websocket: WebSocket) -> None:
        await websocket.accept()
        recorder = AsciicastRecorder(folder, "s", 80, 24, title="t", limits=RecordingLimits())
        relay = TerminalRelay(websocket, recorder, (80, 24), session_id="s")
        made.owners.append(relay)
        chan, _ = await ssh.create_session(relay.factory, encoding=None)
        await relay.run(chan)

    async def invitee(websocket: WebSocket) -> None:
        await websocket.accept()
        relay = ParticipantTerminalRelay(
            websocket, "shell", (80, 24), may_type=may_type, session_id="s"
        )
        made.relays.append(relay)
        chan, _ = await ssh.create_session(relay.factory, encoding=None)
        made.outcomes.append(await relay.run(chan))

    routes = [WebSocketRoute("/o", owner), WebSocketRoute("/p", invitee)]
    async with serving(Starlette(routes=routes), Pages, ws_per_message_deflate=False) as port:
        made.port = port
        Counting.log, Pages.made = [], []
        try:
            yield made
        finally:
            await closing.aclose()


async def until(check: Any, what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out: {what}")


async def nothing_comes(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)


async def test_an_invitee_sees_the_owners_recorded_output_not_their_channels_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_log(monkeypatch)
    async with (
        stack(tmp_path, may_type=True) as made,
        connect(f"ws://127.0.0.1:{made.port}/o") as owner,
    ):
        await until(lambda: made.owners and made.owners[0]._chan, "the owner's channel")
        await owner.send(b"before you joined\r\n")
        assert await echoed(owner, 19) == b"before you joined\r\n"
        await joined_late(made, owner)
    assert invitee_shown_after_recorded(Counting.log) == 19 + len(KEYS) * 5


async def joined_late(made: Stack, owner: ClientConnection) -> None:
    """An invitee joins, sees the catch-up, then what the owner's shell prints;
    their own keys reach their own ``cat``, whose echoes must not reach them."""
    async with connect(f"ws://127.0.0.1:{made.port}/p") as page:
        assert await echoed(page, 19) == b"before you joined\r\n"  # the catch-up first
        for key in KEYS * 5:  # the owner's shell's output reaches both, recorded first
            await owner.send(bytes([key]))
            assert await echoed(owner, 1) == await echoed(page, 1) == bytes([key])
        for key in KEYS:
            await page.send(bytes([key]))
        (relay,) = made.relays
        await until(lambda: relay.counters.to_agent == len(KEYS), "the invitee's keys")
        await nothing_comes(page)
        await nothing_comes(owner)
        assert relay.counters.from_agent == len(KEYS) * 5
        assert Pages.made[1].sent_now >= len(KEYS) * 5 - 2  # in the owner's step


def invitee_shown_after_recorded(log: list[tuple[str, bytes]]) -> int:
    """At every write to the invitee's page, all it has been sent is in the file."""
    recorded = shown = 0
    for where, data in log:
        if where == "disk":
            recorded += recorded_length(data)
        elif where == "page1" and not data.startswith(b"HTTP/"):
            shown += shown_lengths(data)
            assert shown <= recorded, f"{shown} shown to the invitee, {recorded} recorded"
    return shown


@asynccontextmanager
async def invitee_alone(folder: Path, may_type: bool) -> AsyncIterator[Any]:
    """The stack with the test in the owner's relay's place: it keeps ``s``'s output."""
    tail = keep_tail("s")
    try:
        async with stack(folder, may_type) as made:
            yield made, tail
    finally:
        drop_tail("s", tail)


async def test_an_observers_keystrokes_stop_at_the_broker_on_the_short_way_too(
    tmp_path: Path,
) -> None:
    async with (
        invitee_alone(tmp_path, may_type=False) as (made, _),
        connect(f"ws://127.0.0.1:{made.port}/p") as ws,
    ):
        await until(lambda: made.relays and made.relays[0]._chan, "the invitee's channel")
        (relay,) = made.relays
        for n, key in enumerate(KEYS, 1):
            await ws.send(bytes([key]))
            await until(lambda n=n: relay.dropped_input == n, "the observer's key dropped")
        (proto,) = Pages.made
        assert relay.dropped_input == len(KEYS) and relay.counters.to_agent == 0
        assert proto.taken == len(KEYS)
        await nothing_comes(ws)  # nothing reached the shell, nothing echoed


async def test_a_burst_of_kept_output_stays_in_order(tmp_path: Path) -> None:
    async with (
        invitee_alone(tmp_path, may_type=True) as (made, tail),
        connect(f"ws://127.0.0.1:{made.port}/p") as ws,
    ):
        await until(lambda: made.relays and made.relays[0]._follower, "the invitee following")
        keys = KEYS * 100
        for key in keys:
            tail.add(bytes([key]))
        tail.add(keys)
        assert await echoed(ws, 2 * len(keys)) == keys + keys
        assert not made.outcomes, made.outcomes


async def test_a_page_that_reads_nothing_is_cut_off_and_never_holds_the_owner(
    tmp_path: Path,
) -> None:
    async with (
        invitee_alone(tmp_path, may_type=True) as (made, tail),
        connect(f"ws://127.0.0.1:{made.port}/p", max_size=None, max_queue=1),
    ):
        await until(lambda: made.relays and made.relays[0]._follower, "the invitee following")
        block = bytes(range(256)) * 256
        for _ in range(2 * FOLLOW_BACKLOG // len(block)):  # the owner's side never waits
            tail.add(block)
        await until(lambda: made.outcomes, "the invitee's relay ending")
        (outcome,) = made.outcomes
        assert outcome.reason == "error" and outcome.failure is not None
        assert outcome.failure.message == "too slow to follow the session"
        (relay,) = made.relays
        assert relay.counters.from_agent < FOLLOW_BACKLOG + 2 * len(block)


async def test_the_shells_last_output_reaches_a_slow_page_when_it_ends(tmp_path: Path) -> None:
    """The shell printed a lot and exited: the owner's relay kept the last of it and
    stopped, and the PC closed every channel at once; an invitee whose page reads
    late still gets all of it, then their relay ends."""
    async with invitee_alone(tmp_path, may_type=True) as (made, tail):
        small = socket.socket()
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the page's side fills
        small.connect(("127.0.0.1", made.port))
        small.setblocking(False)
        async with connect(f"ws://127.0.0.1:{made.port}/p", sock=small, max_size=None) as ws:
            await last_output_reaches(made, tail, ws)


async def last_output_reaches(made: Stack, tail: Scrollback, ws: ClientConnection) -> None:
    await until(lambda: made.relays and made.relays[0]._follower, "the invitee following")
    (relay,) = made.relays
    block = bytes(range(256)) * 1024  # over a frame: queued, not sent in the owner's step
    for _ in range(12):
        tail.add(block)
    drop_tail("s", tail)  # the owner's relay stopped
    assert relay._chan is not None
    relay._chan.close()  # and the PC closed the invitee's channel
    await asyncio.sleep(0.5)  # the page reads late
    assert await echoed(ws, 12 * len(block)) == block * 12
    await until(lambda: made.outcomes, "the invitee's relay ending")


async def test_without_the_owners_relay_an_invitee_is_told_so(tmp_path: Path) -> None:
    async with stack(tmp_path, may_type=True) as made, connect(f"ws://127.0.0.1:{made.port}/p"):
        await until(lambda: made.outcomes, "the invitee's relay ending")
        (outcome,) = made.outcomes
        assert outcome.failure is not None
        assert outcome.failure.message == "the session's technician left the shell"
