"""A channel the broker closes while the agent holds its input is let go.

``programinput.py`` stops reading a channel whose program is not there yet once
64 KiB wait. asyncssh keeps a peer's close behind the bytes not yet read, so it
never calls ``connection_lost`` for such a channel: if the program then fails to
start, the backend's ``finish`` must close the channel itself, or the grant (and,
on a doorbell, the woken agent's need) stays for good. Real asyncssh on 127.0.0.1;
the backend is a stand-in that holds input as ``ProgramInput`` does.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncssh

from allowhelp.agent.channels import AgentSSHServer, GatedChannel


class HeldInput:
    """A backend whose program never comes: it pauses reading at the first bytes."""

    def __init__(self, gated: Opened) -> None:
        self.gated = gated
        self.held = 0

    def write(self, data: bytes) -> None:
        self.held += len(data)
        self.gated.pause_reading()

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def close(self) -> int:
        return 0


class Opened(GatedChannel):
    """The real channel, opened without the consent gate's subsystem step (the
    gate is not what this test is about: ``finish`` and ``connection_lost`` are)."""

    def __init__(self, server: AgentSSHServer) -> None:
        super().__init__(server)
        self.lost = asyncio.Event()

    def shell_requested(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # where the grant is let go
        self.lost.set()


class Agent(asyncssh.SSHServer):
    def __init__(self, opened: asyncio.Queue[HeldInput]) -> None:
        self.opened = opened

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> Opened:
        # No service is reached on this path: no grant, no control channel.
        gated = Opened(cast(AgentSSHServer, _Stand()))
        backend = HeldInput(gated)
        gated._backend = backend
        self.opened.put_nowait(backend)
        return gated


class _Stand:
    _service: Any = None
    agent_id = "test"


class Client(asyncssh.SSHClientSession[bytes]):
    pass


async def test_a_close_behind_held_input_is_delivered_once_the_backend_fails() -> None:
    opened: asyncio.Queue[HeldInput] = asyncio.Queue()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        lambda: Agent(opened), "127.0.0.1", 0, server_host_keys=[key], encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="broker") as conn:
            chan, _ = await conn.create_session(Client, term_type=None, encoding=None)
            backend = await asyncio.wait_for(opened.get(), 10)
            chan.write(b"k" * 200_000)  # more than is read before the pause
            async with asyncio.timeout(10):
                while backend.held == 0:
                    await asyncio.sleep(0.01)
            chan.close()  # the broker lets the channel go; the agent's is paused
            await asyncio.sleep(0.3)
            assert not backend.gated.lost.is_set()  # asyncssh holds the close back
            backend.gated.finish(1, "the program did not start")
            await asyncio.wait_for(backend.gated.lost.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
