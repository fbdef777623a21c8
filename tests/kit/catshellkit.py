"""A real asyncssh server whose shell is ``cat`` (and, on ``F``, a flood): the far end
of the relay tests that need a shell channel without an agent
(tests/relay/test_shortcut.py, test_participant_shortcut.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncssh

FLOOD = 8 * 1024 * 1024


class NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


async def shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """``cat``, and on ``F`` a flood of ``FLOOD`` bytes (as fast as the window lets it)."""
    while True:
        try:
            data = await process.stdin.read(65536)
        except asyncssh.TerminalSizeChanged:
            continue  # a resize: nothing to echo
        if not data:
            break
        if data == b"F":
            block = bytes(range(256)) * 256
            for _ in range(FLOOD // len(block)):
                process.stdout.write(block)
                await process.stdout.drain()
        else:
            process.stdout.write(data)
    process.exit(0)


async def ssh_client(server: asyncssh.SSHAcceptor) -> asyncssh.SSHClientConnection:
    """A client connection to a test server listening on 127.0.0.1 (it takes anyone)."""
    return await asyncssh.connect(
        "127.0.0.1",
        server.sockets[0].getsockname()[1],
        known_hosts=None,
        username="x",
        config=None,
        client_keys=None,
    )


@asynccontextmanager
async def cat_over_ssh() -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A client connection to a fresh ``cat`` server on 127.0.0.1; both closed after."""
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=shell,
        encoding=None,
        config=None,
        server_factory=NoAuth,
    )
    try:
        ssh = await ssh_client(server)
        try:
            yield ssh
        finally:
            ssh.close()
    finally:
        server.close()
        await server.wait_closed()
