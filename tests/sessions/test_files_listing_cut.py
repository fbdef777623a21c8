"""A listing that breaks mid-way is never a well-formed array (``sftpwire.list_folder``).

OpenSSH's real sftp-server, reached the way the broker reaches it (asyncssh's SFTP
client over an SSH channel; here an in-process asyncssh server bridges the channel
to the program on a socketpair, as the agent does). sftp-server sends a folder 100
entries at a time; the PC "stops answering" (the program is stopped, SIGSTOP) once
the first entry is in, so its second batch never comes: the listing is cut mid-way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from sftpkit import SFTP_SERVER, real_sftp

from allowhelp.broker.errors import AgentTimeout, BrokerError
from allowhelp.broker.sessions import sftpwire
from allowhelp.broker.sessions.sftpwire import list_folder

LIMIT = 1.0  # seconds for each call, small for the test

pytestmark = pytest.mark.skipif(not SFTP_SERVER, reason="needs OpenSSH's sftp-server")


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
