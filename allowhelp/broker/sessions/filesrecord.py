"""The record of each files transfer (``files.py``): its start on the audit before
the PC is asked anything about the path, its end (``files.transfer.done`` or
``files.transfer.failed``) on the audit and in the store, and both told to the PC
user's session window."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import BrokerError
from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.filechannel import Transfer
from allowhelp.broker.sessions.sftpwire import unsure
from allowhelp.broker.store import Store
from allowhelp.broker.store.session_extras import TransferRecord
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.protocol.control import FileTransfer

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_SHOWN = 1000  # characters of a path the PC user's window is sent
Notify = Callable[[Session, FileTransfer], None]


class TransferBook:
    """Each transfer's start and end, on the audit, in the store and on the PC."""

    def __init__(self, audit: AuditLog, db: StoreWorker, notify: Notify | None) -> None:
        self._audit = audit
        self._db = db
        self._notify = notify

    async def started(self, transfer: Transfer) -> Transfer:
        """On the record before the PC is asked anything about the path (the size is in
        the end's record); the PC is told once the path is found fit (``tell``)."""
        session = transfer.session
        details = {**session.summary(), "path": transfer.path, "direction": transfer.direction}
        await self._audit.write(
            "files.transfer.started",
            actor=f"technician:{transfer.username}",
            target=session.id,
            details=details,
        )
        transfer.started = time.time()
        return transfer

    async def looked_at(self, transfer: Transfer, checks: Awaitable[T]) -> T:
        """The path's ``checks`` (or its opening) on the PC, the transfer's start already
        on the record: a refusal, or the request cut meanwhile, ends it as failed, on
        the record."""
        try:
            return await checks
        except BaseException as exc:
            cut = f"{transfer.path}: the {transfer.direction} was cut before it began"
            error = exc if isinstance(exc, BrokerError) else BrokerError(cut)
            with anyio.CancelScope(shield=True):  # cancelled again at every await
                await self.finished(transfer, error)
            raise

    async def finished(self, transfer: Transfer, error: BrokerError | None) -> None:
        session, outcome = transfer.session, unsure(error)  # all sent, the rename unanswered
        record = TransferRecord(
            session.id,
            transfer.path,
            transfer.direction,
            transfer.size,
            None if error and not outcome else transfer.digest.hexdigest(),
            error is None,
            "" if error is None else error.message,
            transfer.started,
            time.time(),
        )
        details = {**session.summary(), **record.to_json(), **outcome}
        kind = "files.transfer.done" if error is None else "files.transfer.failed"
        try:
            await self._audit.write(
                kind, actor=f"technician:{transfer.username}", target=session.id, details=details
            )
        except BrokerError as exc:  # the start is on the record; say so in the log
            log.error("session=%s %s of %s not recorded: %s", session.id, kind, transfer.path, exc)
        try:
            await self._db.run(Store.add_transfer, record)
        except BrokerError as exc:
            log.error("session=%s transfer of %s not stored: %s", session.id, transfer.path, exc)
        self.tell(transfer, transfer.size, "done" if error is None else "failed")

    def tell(self, transfer: Transfer, size: int, status: str) -> None:
        if self._notify is not None:
            session = transfer.session
            path = transfer.path  # a long one keeps its end, the file's name
            shown = path if len(path) <= MAX_SHOWN else "…" + path[-(MAX_SHOWN - 1) :]
            message = FileTransfer(session.id, shown, transfer.direction, size, status)
            self._notify(session, message)
