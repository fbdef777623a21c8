"""SFTP calls the broker gave up on, answered around the limit (``sftpwire``).

Plain asyncio, no PC: a call is a future the test resolves when it likes.

- A file the PC opened just as the limit ran out, or just as the request was cut,
  is still closed (``bounded``'s ``late``), not left open on the PC.
- An upload's last step, on a server without POSIX rename: when removing the old
  file does not answer, the rename is never sent (it could land after the upload's
  temporary file is gone, leaving nothing); the error says the outcome is unknown
  and that the upload is kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncssh
import pytest

from allowhelp.broker.errors import AgentTimeout
from allowhelp.broker.sessions.sftpwire import UnsureRename, bounded, rename_onto, unsure

LIMIT = 0.05


async def _closed_soon(closed: list[str]) -> None:
    for _ in range(50):
        if closed:
            return
        await asyncio.sleep(0.01)


async def test_a_file_opened_one_turn_after_the_limit_is_closed() -> None:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[str] = loop.create_future()
    closed: list[str] = []

    async def close(handle: str) -> None:
        closed.append(handle)

    def past_the_limit() -> None:
        time.sleep(LIMIT * 2)  # the limit runs out while the loop is held
        # the PC's answer comes one loop turn after the limit's own
        loop.call_soon(lambda: loop.call_soon(opened.set_result, "handle"))

    loop.call_later(LIMIT / 2, past_the_limit)
    with pytest.raises(AgentTimeout):
        await bounded(opened, LIMIT, "f.txt", close)
    assert opened.done() and not opened.cancelled()  # the answer had come: not waited for
    await _closed_soon(closed)
    assert closed == ["handle"]


async def test_a_file_opened_as_the_request_is_cut_is_closed() -> None:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[str] = loop.create_future()
    closed: list[str] = []

    async def close(handle: str) -> None:
        closed.append(handle)

    waiting = asyncio.ensure_future(bounded(opened, 10, "f.txt", close))
    await asyncio.sleep(0)  # asking the PC
    waiting.cancel()  # the browser goes away, and in the same turn the PC answers
    opened.set_result("handle")
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await _closed_soon(closed)
    assert closed == ["handle"]


class NoPosixRename:
    """An SFTP client whose server lacks posix-rename and does not answer a remove."""

    def __init__(self) -> None:
        self.renamed: list[tuple[bytes, bytes]] = []
        self.removing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def posix_rename(self, old: bytes, new: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("no posix-rename")

    def remove(self, path: bytes) -> asyncio.Future[None]:
        return self.removing

    async def rename(self, old: bytes, new: bytes) -> None:
        self.renamed.append((old, new))


async def test_a_remove_that_does_not_answer_sends_no_rename_and_keeps_the_upload() -> None:
    client = NoPosixRename()
    fake: Any = client
    with pytest.raises(UnsureRename) as raised:
        await rename_onto(fake, ".allowhelp-up.bin.1a2b", "up.bin", LIMIT)
    assert raised.value.keep
    outcome = unsure(raised.value)["outcome"]
    assert outcome.startswith("unknown:") and ".allowhelp-up.bin.1a2b" in outcome
    client.removing.set_result(None)  # the PC answers after all
    await asyncio.sleep(0.05)
    assert client.renamed == []  # never sent later
