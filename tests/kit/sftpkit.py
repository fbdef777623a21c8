"""OpenSSH's real sftp-server, reached the way the broker reaches it: asyncssh's SFTP
client over an SSH channel of its own subsystem name, which an in-process asyncssh
server on 127.0.0.1 bridges to the program on a socketpair, as the agent does
(``test_files_listing_cut.py``, ``test_files_hidden_default.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
from asyncssh.sftp import MIN_SFTP_VERSION, start_sftp_client

from allowhelp.agent.files import FilesUnavailable, find_sftp_server

try:
    SFTP_SERVER = find_sftp_server()
except FilesUnavailable:
    SFTP_SERVER = ""


class Bridge(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # a test server on 127.0.0.1: no authentication


@asynccontextmanager
async def real_sftp(folder: Path) -> AsyncIterator[tuple[asyncssh.SFTPClient, list[int]]]:
    """An SFTP client talking to a real sftp-server started in ``folder``; the
    server's process ids as they start."""
    pids: list[int] = []
    programs: list[subprocess.Popen[bytes]] = []

    async def bridge(process: asyncssh.SSHServerProcess[bytes]) -> None:
        ours, theirs = socket.socketpair()
        argv = [SFTP_SERVER, "-d", str(folder)]
        program = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno())
        theirs.close()
        programs.append(program)
        pids.append(program.pid)
        reader, writer = await asyncio.open_unix_connection(sock=ours)

        async def to_program() -> None:
            while data := await process.stdin.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()  # the client is gone: sftp-server ends

        async def from_program() -> None:
            while data := await reader.read(65536):
                process.stdout.write(data)
                await process.stdout.drain()

        try:
            await asyncio.gather(to_program(), from_program(), return_exceptions=True)
            process.exit(0)
        finally:
            writer.close()

    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        Bridge, "127.0.0.1", 0, server_host_keys=[key], process_factory=bridge, encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="test", client_keys=None
        ) as conn:
            # as the broker does (``AgentLink.open_sftp``): a subsystem of its own name
            writer, reader, _ = await conn.open_session(subsystem="files", encoding=None)
            client = await start_sftp_client(
                conn, asyncio.get_running_loop(), "strict", reader, writer,
                None, "strict", MIN_SFTP_VERSION,
            )  # fmt: skip
            try:
                yield client, pids
            finally:
                client.exit()
    finally:
        for program in programs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(program.pid, signal.SIGCONT)
            program.kill()
            program.wait()
        server.close()
