"""A session that ends while its terminal's channel is still opening gets no relay.

The attach path awaits the PC's channel (up to 20 s). An end meanwhile (the
technician's button, an admin, the user) stops the relay, which has no channel
yet, and writes the end record; the channel that opens afterwards used to be
pumped anyway, its output shown to the technician and left out of the recording
(the recorder was sealed), and its keystrokes written to a shell of an ended
session. Real parts: the broker's ``SessionRegistry`` on a real audit log and
store, ``claim`` and ``run_relay``, a ``TerminalRelay`` with its recorder, served
by uvicorn with the console's WebSocket protocol, and a real asyncssh server (the
PC) whose channel open waits until the test lets it go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncssh
import pytest
from bookkit import active
from catshellkit import ssh_client
from shortcutkit import Counting, serving
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from allowhelp.broker.audit.log import AuditLog, read_records
from allowhelp.broker.audit.recording import AsciicastRecorder, RecordingLimits
from allowhelp.broker.relay.outcome import Outcome
from allowhelp.broker.relay.terminal import TerminalRelay
from allowhelp.broker.sessions.attach import claim, run_relay
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.help import HelpDesk
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import Message

PROMPT = b"root@pc:~# "


class _Shell(asyncssh.SSHServerSession[bytes]):
    """The PC's shell: a prompt at once, then an echo of what it is sent."""

    def __init__(self, heard: bytearray) -> None:
        self._heard = heard

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def pty_requested(self, *args: object) -> bool:
        return True

    def session_started(self) -> None:
        self._chan.write(PROMPT)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._heard.extend(data)
        self._chan.write(data)


class _SlowPC(asyncssh.SSHServer):
    """Opens a channel only once ``go`` is set; ``asked`` says it was asked."""

    def __init__(self, asked: asyncio.Event, go: asyncio.Event, heard: bytearray) -> None:
        self._asked, self._go, self._heard = asked, go, heard

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> Awaitable[_Shell]:
        async def opened() -> _Shell:
            self._asked.set()
            await self._go.wait()
            return _Shell(self._heard)

        return opened()


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[SessionRegistry]:
    audit = AuditLog.open(tmp_path / "audit.sqlite3")
    db = await StoreWorker.open(tmp_path / "broker.sqlite3")
    agents, events = AgentRegistry(), EventHub()
    help_desk = HelpDesk(db, audit, events, agents)
    registry = SessionRegistry(
        db, audit, agents, events, help_desk, organisation="IT", consent_timeout=60
    )
    try:
        yield registry
    finally:
        for task in registry._tasks:
            task.cancel()
        await db.close()
        audit.close()


async def _nowhere(agent_id: str, message: Message) -> None:
    """The control channel's lines: none in this test."""


async def test_a_channel_that_opens_after_the_end_is_closed_not_relayed(
    tmp_path: Path, book: SessionRegistry
) -> None:
    asked, go, heard = asyncio.Event(), asyncio.Event(), bytearray()
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: _SlowPC(asked, go, heard),  # no process factory: its sessions
        encoding=None,
        config=None,
    )
    async with server, await ssh_client(server) as ssh:
        session = await active(book)
        link = AgentLink(session.agent_id, ssh, _nowhere)
        book.agents.attach(session.agent_id, link, "127.0.0.1")  # as the tunnel's listener does
        book.pin_link(session.id, link)
        outcomes: list[Outcome] = []
        recording = tmp_path / "recordings"
        recording.mkdir()

        async def terminal(websocket: WebSocket) -> None:
            await websocket.accept()
            recorder = AsciicastRecorder(
                recording, session.id, 80, 24, title="t", limits=RecordingLimits(min_free=0)
            )
            claimed, link, relay = claim(
                book,
                session.id,
                "alice",
                "shell",
                lambda _: TerminalRelay(websocket, recorder, (80, 24), session_id=session.id),
            )
            outcomes.append(await run_relay(book, claimed, link, relay))
            await websocket.close()

        app = Starlette(routes=[WebSocketRoute("/t", terminal)])
        async with (
            serving(app, Counting, ws_per_message_deflate=False) as port,
            connect(f"ws://127.0.0.1:{port}/t") as ws,
        ):
            await asyncio.wait_for(asked.wait(), 10)  # the channel is opening at the PC
            await book.end(session.id, reason="technician", actor="technician:alice")
            go.set()  # ... and opens, after the end is on the record
            await ws.send(b"id\n")
            shown = bytearray()
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        shown.extend(await ws.recv())  # type: ignore[arg-type]
            assert PROMPT not in shown  # nothing of the PC's after the end
        await asyncio.sleep(0.2)  # anything the relay would still have written
    assert bytes(heard) == b""  # no keystroke reached the ended session's shell
    assert [o.reason for o in outcomes] == ["technician"]
    cast = (recording / f"{session.id}.cast").read_bytes()
    assert b"root@pc" not in cast
    types = [r.type for r in read_records(tmp_path / "audit.sqlite3")]
    assert types.count("session.ended") == 1
    assert "session.started" in types
