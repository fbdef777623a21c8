"""A files session's parts as ``FileDesk`` keeps them (``files.py``): its one SFTP
channel to the PC, and each transfer as it goes (and its temporary file, when the
PC stopped answering mid-upload, removed once it answers)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from allowhelp.broker.errors import Conflict
from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.fileshidden import UsersOwn
from allowhelp.broker.sessions.filesprobe import Liveness
from allowhelp.broker.sessions.sftpwire import (
    LATE_TIDY_TIMEOUT,
    discard,
    later,
    remove_then_exit,
)


@dataclass
class FileChannel:
    """One session's SFTP client, opened once (one grant, one channel)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: asyncssh.SFTPClient | None = None
    closed: bool = False
    to_agent: int = 0
    from_agent: int = 0
    temps: set[str] = field(default_factory=set)  # uploads' temporary names, in flight
    liveness: Liveness = field(default_factory=Liveness)  # a PC stuck on a call given up on
    own: UsersOwn = field(default_factory=UsersOwn)  # the user's default agent folder

    def stop(self) -> Coroutine[Any, Any, None] | None:
        """Closed to new requests at once; what is left to do on the PC (remove
        the temporary files, then close the client), if anything."""
        self.closed = True
        return None if self.client is None else remove_then_exit(self.client, set(self.temps))


@dataclass
class Transfer:
    """One file going to or coming from the PC, as it goes."""

    session: Session
    username: str
    path: str
    direction: str  # upload | download
    started: float = 0.0
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    temp: str = ""  # an upload's temporary name
    left: bool = False  # its temporary file may be on the PC still: the session's end removes it

    def add(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)


def still_open(channel: FileChannel) -> None:
    """Refuse to go on once the session's end closed its file channel."""
    if channel.closed:
        raise Conflict("the session ended during the upload", code="files_closed")


def tidy_later(
    transfer: Transfer,
    client: asyncssh.SFTPClient,
    channel: FileChannel,
    handle: asyncssh.SFTPClientFile | None,
) -> None:
    """An upload's temporary file on a PC that stopped answering: removed once it
    answers (``LATE_TIDY_TIMEOUT`` at most), else by the session's end."""
    transfer.left = True  # stays in ``channel.temps`` until it is gone

    async def tidy() -> None:
        if await discard(client, handle, transfer.temp, LATE_TIDY_TIMEOUT):
            channel.temps.discard(transfer.temp)

    later(tidy(), LATE_TIDY_TIMEOUT)
