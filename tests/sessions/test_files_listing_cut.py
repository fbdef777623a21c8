"""A listing that breaks mid-way is never a well-formed array (``sftpwire.list_folder``).

OpenSSH's real sftp-server, reached the way the broker reaches it (asyncssh's SFTP
client over an SSH channel; here an in-process asyncssh server bridges the channel
to the program on a socketpair, as the agent does). sftp-server sends a folder 100
entries at a time; the PC "stops answering" (the program is stopped, SIGSTOP) once
the first entry is in, so its second batch never comes: the listing is cut mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest
from asyncssh.sftp import MIN_SFTP_VERSION, start_sftp_client

from allowhelp.agent.files import FilesUnavailable, find_sftp_server
from allowhelp.broker.errors import AgentTimeout, BrokerError
from allowhelp.broker.sessions import sftpwire
from allowhelp.broker.sessions.sftpwire import list_folder

LIMIT = 1.0  # seconds for each call, small for the test

try:
    SFTP_SERVER = find_sftp_server()
except FilesUnavailable:
    SFTP_SERVER = ""

pytestmark = pytest.mark.skipif(not SFTP_SERVER, reason="needs OpenSSH's sftp-server")


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


class StopsAfterFirst:
    """The real client, whose folder reading stops the PC's sftp-server once the
    first entry is in (its first batch of 100 is whole; the next never comes)."""

    def __init__(self, client: asyncssh.SFTPClient, pids: list[int]) -> None:
        self._client = client
        self._pids = pids

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._client.stat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        first = True
        async for entry in self._client.scandir(path):
            yield entry
            if first:
                first = False
                for pid in self._pids:
                    os.kill(pid, signal.SIGSTOP)


def big_folder(tmp_path: Path, count: int = 250) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:04d}.txt").write_bytes(b"x")
    return folder


async def body(stream: AsyncIterator[bytes]) -> tuple[bytes, BaseException | None]:
    got = b""
    try:
        async for chunk in stream:
            got += chunk
    except BrokerError as exc:
        return got, exc
    return got, None


async def test_a_whole_folder_is_one_array_held_or_streamed(tmp_path: Path) -> None:
    folder = big_folder(tmp_path)
    async with real_sftp(tmp_path) as (client, _):
        for held in (10_000, 7):  # answered whole, or streamed on past 7 entries
            got, error = await body(await list_folder(client, folder.name, LIMIT, held))
            assert error is None
            names = {entry["name"] for entry in json.loads(got)}
            assert names == {f"f{i:04d}.txt" for i in range(250)}


async def test_a_listing_cut_before_its_answer_is_an_error_not_an_array(
    tmp_path: Path,
) -> None:
    folder = big_folder(tmp_path)
    async with real_sftp(tmp_path) as (client, pids):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AgentTimeout) as cut:
            await list_folder(StopsAfterFirst(client, pids), folder.name, LIMIT)  # type: ignore[arg-type]
        assert loop.time() - started < LIMIT + 2
        assert cut.value.code == "listing_cut"
        assert (
            "incomplete" in cut.value.message
            and f"did not answer in {LIMIT:g} s" in cut.value.message
        )
        for pid in pids:  # the PC answers again: the same client goes on
            os.kill(pid, signal.SIGCONT)
        got, error = await body(await list_folder(client, folder.name, LIMIT))
        assert error is None and len(json.loads(got)) == 250


async def test_a_streamed_listing_cut_ends_without_its_closing_bracket(tmp_path: Path) -> None:
    folder = big_folder(tmp_path)
    async with real_sftp(tmp_path) as (client, pids):
        stream = await list_folder(StopsAfterFirst(client, pids), folder.name, LIMIT, 7)  # type: ignore[arg-type]
        got, error = await body(stream)
        assert isinstance(error, AgentTimeout) and error.code == "listing_cut"
        assert got.startswith(b"[") and not got.rstrip().endswith(b"]")
        with pytest.raises(ValueError):
            json.loads(got)


class Slow:
    """The real client, each entry after the first 20 ms late: a PC on a slow mount."""

    def __init__(self, client: asyncssh.SFTPClient) -> None:
        self._client = client

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._client.stat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        async for entry in self._client.scandir(path):
            yield entry
            await asyncio.sleep(0.02)


async def test_a_slow_listing_starts_answering_after_its_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node relaying the answer waits 60 s a piece: what is held before the first
    byte is bounded in time too (``HOLD_FOR``), not only in entries."""
    monkeypatch.setattr(sftpwire, "HOLD_FOR", 0.3)
    folder = big_folder(tmp_path)  # 250 entries: 5 s at 20 ms each
    async with real_sftp(tmp_path) as (client, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await list_folder(Slow(client), folder.name, LIMIT)  # type: ignore[arg-type]
        assert loop.time() - started < 2, "the answer waited for the whole folder"
        got, error = await body(stream)
        assert error is None and len(json.loads(got)) == 250
