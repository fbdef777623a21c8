"""Files sessions: listing, download and upload through the PC's sftp-server.

Once allowed, a ``files`` session gets one SSH channel (``allowhelp.files/<id>``),
opened at the first request, bridged by the agent to ``sftp-server`` as the
signed-in user; asyncssh's SFTP client streams both ways, a chunk at a time.

Rules:
- only the technician the user consented to, while the session is active
  (the same rule as ``attach.claim``);
- every path checked first (``filepaths.py``), and where it leads on the PC next
  (``fileshidden.py``): never into the agent's own folders (its keys), 403
  ``path_hidden``, ``files.refused`` on the record;
- audit before action: ``files.listed`` and ``files.transfer.started`` are
  written before the PC is asked; ``files.transfer.done`` (path, size,
  direction, SHA-256) or ``files.transfer.failed`` after;
- an upload goes to a temporary name in the same folder and is renamed onto
  the final name only once complete: a cut upload leaves no half file under
  that name, and the temporary file is removed;
- every start has its end on the record, even when the browser goes away
  mid-stream (written shielded from the request's cancellation);
- an upload gets the replaced file's permission bits (0600 stays 0600), 0600 for
  a new name; a session ending mid-upload removes its temporary file first;
- a view-only session (``Session.view_only``) takes no upload: ``files.refused``,
  then 403 ``view_only``, nothing sent (its sftp-server is ``-R``);
- a file larger than ``max_file`` is refused (up front for a download; for an
  upload up front when its Content-Length says so, else at the limit);
- every SFTP call has ``call_timeout`` seconds (a stream: each chunk): a PC that
  does not answer in time (a stuck network mount) ends the request with 504
  ``pc_not_answering`` (a transfer: ``files.transfer.failed``; an unanswered rename:
  SHA-256 and ``outcome``, ``sftpwire.UnsureRename``), the session goes on; until
  the PC answers again, its later requests end so at once (``filesprobe.py``);
- a listing is whole or visibly not (``sftpwire.list_folder``): ``listing_cut``
  when it breaks mid-way, a cut answer (no closing ``]``) past ``max_held``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

import anyio
import asyncssh

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import (
    AgentTimeout,
    AgentUnreachable,
    BadRequest,
    BrokerError,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
    TunnelError,
)
from allowhelp.broker.model.session import Session, State, Traffic
from allowhelp.broker.sessions.filechannel import FileChannel, Transfer, still_open, tidy_later
from allowhelp.broker.sessions.filepaths import upload_names
from allowhelp.broker.sessions.fileshidden import HiddenFolders, UsersOwn
from allowhelp.broker.sessions.filesrecord import Notify, TransferBook
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.sessions.sftpwire import (
    CALL_TIMEOUT,
    MAX_HELD,
    SFTP_ERRORS,
    bounded,
    discard,
    download_size,
    later,
    list_folder,
    open_file,
    rename_onto,
    sftp_error,
    upload_mode,
)
from allowhelp.broker.store.worker import StoreWorker

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_FILE = 4 * 1024**3
OPEN_TIMEOUT = 20.0
CLOSE_TIMEOUT = 5.0  # for closing a file on the PC once a transfer is over


class FileDesk:
    def __init__(
        self,
        sessions: SessionRegistry,
        audit: AuditLog,
        db: StoreWorker,
        *,
        max_file: int = MAX_FILE,
        call_timeout: float = CALL_TIMEOUT,
        max_held: int = MAX_HELD,
        notify: Notify | None = None,
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._book = TransferBook(audit, db, notify)
        self._hidden = HiddenFolders(audit)
        self.max_file = max_file
        self.call_timeout = call_timeout  # seconds for each SFTP call, each chunk
        self.max_held = max_held  # a listing's entries read before its answer starts
        self._channels: dict[str, FileChannel] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # channels' last steps as sessions end

    # who may, and the channel

    def _session(self, session_id: str, username: str) -> Session:
        session = self._sessions.live(session_id)
        if session is None or session.technician != username:
            raise NotFound("no such session, or it is over")
        if session.kind != "files" or session.state is not State.ACTIVE:
            raise Conflict(
                f"the session is a {session.state} {session.kind} session, not an active files"
                " session",
                code="not_files",
            )
        if self._sessions.ending(session_id):
            raise Conflict("the session is ending")
        return session

    async def _reach(
        self,
        session: Session,
        username: str,
        client: asyncssh.SFTPClient,
        path: str,
        own: UsersOwn,
        *,
        upload: bool = False,
    ) -> None:
        """Refused (on the record) when ``path`` leads into a folder the agent's Hello
        hides (its own keys) or the user's default agent folder (``own``: whatever
        the Hello says); an agent gone meanwhile: the session is ending."""
        live = self._sessions.agents.get(session.agent_id)
        if live is None:
            raise AgentUnreachable("the machine is offline")
        hidden, limit = live.files_hidden, self.call_timeout
        await self._hidden.check(
            session, username, client, path, hidden=hidden, own=own, limit=limit, upload=upload
        )

    async def _client(self, session: Session) -> tuple[asyncssh.SFTPClient, FileChannel]:
        channel = self._channels.get(session.id)
        if channel is None:
            channel = self._channels[session.id] = FileChannel()
            self._sessions.attach_relay(session.id, lambda: self._stopped(session.id))
        async with channel.lock:
            if channel.closed:
                raise Conflict("the session's file channel is closed", code="files_closed")
            if channel.client is None:
                client = await self._open(session)
                if channel.closed:  # the session ended while its files opened
                    client.exit()
                    raise Conflict("the session's file channel is closed", code="files_closed")
                channel.client = client
            return channel.client, channel

    async def _open(self, session: Session) -> asyncssh.SFTPClient:
        link = self._sessions.session_link(session.id)
        if link is None:
            raise AgentUnreachable("the machine is offline")
        await self._sessions.audit_started(session, {"channel": "files"})
        try:
            return await asyncio.wait_for(link.open_sftp(session.id), OPEN_TIMEOUT)
        except TunnelError as exc:
            await self._sessions.fail(session.id, str(exc))
            raise AgentUnreachable(str(exc)) from exc
        except TimeoutError as exc:
            await self._sessions.fail(session.id, "the PC did not open its files in time")
            raise AgentUnreachable("the PC did not open its files in time") from exc

    def _stopped(self, session_id: str) -> Traffic:
        channel = self._channels.pop(session_id, None)
        if channel is None:
            return Traffic()
        last = channel.stop()
        if last is not None:
            task = asyncio.get_running_loop().create_task(last)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return Traffic(to_agent=channel.to_agent, from_agent=channel.from_agent)

    # listing

    async def listing(self, session_id: str, username: str, path: str) -> AsyncIterator[bytes]:
        """The folder as a JSON array: whole up to ``max_held`` entries or 10 s (an error before
        the first byte: no such folder, a file, no right, cut mid-way, the PC not
        answering), streamed on past that (a cut then ends the answer short)."""
        session = self._session(session_id, username)
        client, channel = await self._client(session)  # session.started first (first request)
        await self._audit.write(
            "files.listed", actor=f"technician:{username}", target=session_id,
            details={**session.summary(), "path": path},
        )  # fmt: skip
        liveness = channel.liveness
        await liveness.answering(path, self.call_timeout)  # a PC stuck on an earlier call
        with liveness.watching(client):
            await self._reach(session, username, client, path, channel.own)
            listing = await list_folder(client, path, self.call_timeout, self.max_held)
        return liveness.watched(listing, client)

    # download

    async def download(
        self, session_id: str, username: str, path: str
    ) -> tuple[int, AsyncIterator[bytes]]:
        """(size, chunks) of a regular file; the audit has it before the PC is asked
        anything about it (a refusal ends the transfer as failed, on the record)."""
        session = self._session(session_id, username)
        client, channel = await self._client(session)
        book, limit = self._book, self.call_timeout
        transfer = await book.started(Transfer(session, username, path, "download"))
        await book.looked_at(transfer, channel.liveness.answering(path, limit))
        with channel.liveness.watching(client):
            await book.looked_at(
                transfer, self._reach(session, username, client, path, channel.own)
            )
            size = await book.looked_at(transfer, download_size(client, path, self.max_file, limit))
            book.tell(transfer, size, "started")
            handle = await book.looked_at(transfer, open_file(client, path, "rb", limit))
        return size, self._chunks(transfer, client, handle, channel, size)

    async def _chunks(
        self,
        transfer: Transfer,
        client: asyncssh.SFTPClient,
        handle: asyncssh.SFTPClientFile,
        channel: FileChannel,
        size: int,
    ) -> AsyncIterator[bytes]:
        error: BrokerError | None = None
        path = transfer.path
        try:
            while transfer.size < size:
                reading = handle.read(min(CHUNK, size - transfer.size), transfer.size)
                data = await bounded(reading, self.call_timeout, path)
                if not isinstance(data, bytes) or not data:
                    break
                transfer.add(data)
                channel.from_agent += len(data)
                yield data
            if transfer.size != size:
                error = Conflict(f"{path}: the file changed while it was read", code="changed")
        except (BrokerError, *SFTP_ERRORS) as exc:  # AgentTimeout: the PC stopped answering
            error = sftp_error(exc, path)
        except BaseException:  # the browser went away (cancelled): a cut download
            error = BrokerError(f"{path}: the download was cut after {transfer.size} bytes")
            raise
        finally:
            channel.liveness.noticed(error, client)  # a chunk given up on
            await self._end_download(transfer, handle, error)
        # An error after the first byte cannot become an HTTP answer any more: the
        # body stops short of its Content-Length (the client sees a cut download)
        # and the audit and the store have the failure.

    async def _end_download(
        self, transfer: Transfer, handle: asyncssh.SFTPClientFile, error: BrokerError | None
    ) -> None:
        """Close the file and write the end; shielded, as a browser gone away
        cancels the response's task group again at every await (anyio). A PC that
        stopped answering gets the close to do on its own, not waited for."""
        with anyio.CancelScope(shield=True):
            if isinstance(error, AgentTimeout):
                later(handle.close())
                await self._book.finished(transfer, error)
                return
            with (
                anyio.move_on_after(CLOSE_TIMEOUT),
                contextlib.suppress(asyncssh.Error, OSError, EOFError),
            ):
                await handle.close()
            await self._book.finished(transfer, error)

    # upload

    async def upload(
        self,
        session_id: str,
        username: str,
        path: str,
        body: AsyncIterator[bytes],
        *,
        declared: int | None = None,
    ) -> dict[str, object]:
        """Write ``body`` to a temporary name, then rename it onto ``path``. A view-only
        session refuses it (``files.refused``); a ``declared`` size (Content-Length)
        over ``max_file`` is refused at once: nothing asked of the PC."""
        session = self._session(session_id, username)
        if session.view_only:  # the PC's sftp-server is read-only (-R) too
            await self._audit.write(
                "files.refused", actor=f"technician:{username}", target=session_id,
                details={**session.summary(), "path": path, "why": "view only"},
            )  # fmt: skip
            raise Forbidden(
                "this files session is view only: nothing may be written to the PC",
                code="view_only",
            )
        if declared is not None and declared > self.max_file:
            raise TooLarge(f"uploads are limited to {self.max_file} bytes")
        client, channel = await self._client(session)
        folder, temp = upload_names(path, secrets.token_hex(6))
        book, limit = self._book, self.call_timeout
        transfer = await book.started(Transfer(session, username, path, "upload", temp=temp))
        await book.looked_at(transfer, channel.liveness.answering(path, limit))
        with channel.liveness.watching(client):
            reach = self._reach(session, username, client, path, channel.own, upload=True)
            await book.looked_at(transfer, reach)
            mode = await book.looked_at(transfer, upload_mode(client, path, folder, limit))
            book.tell(transfer, 0, "started")
            channel.temps.add(temp)  # the session's end removes it if still there
            try:
                await self._write(transfer, client, channel, mode, body)
            finally:
                if not transfer.left:
                    channel.temps.discard(temp)
        return {"path": path, "size": transfer.size, "sha256": transfer.digest.hexdigest()}

    async def _write(
        self,
        transfer: Transfer,
        client: asyncssh.SFTPClient,
        channel: FileChannel,
        mode: int,
        body: AsyncIterator[bytes],
    ) -> None:
        path, temp, limit = transfer.path, transfer.temp, self.call_timeout

        async def opened() -> asyncssh.SFTPClientFile:  # O_EXCL: never someone's file;
            still_open(channel)  # ``mode``: the bits of the file it replaces
            return await open_file(client, temp, "xb", limit, mode)

        try:
            handle = await self._book.looked_at(transfer, opened())
        except BaseException as exc:
            if isinstance(exc, AgentTimeout) or not isinstance(exc, Exception):
                tidy_later(transfer, client, channel, None)  # the PC may make it yet
            raise
        error: BrokerError | None = None
        try:
            async for data in body:
                still_open(channel)
                if transfer.size + len(data) > self.max_file:
                    raise TooLarge(f"uploads are limited to {self.max_file} bytes")
                await bounded(handle.write(data, transfer.size), limit, path)
                transfer.add(data)
                channel.to_agent += len(data)
            await bounded(handle.close(), limit, path)
            still_open(channel)
            await rename_onto(client, temp, path, limit)
        except BrokerError as exc:
            error = exc
        except SFTP_ERRORS as exc:
            error = sftp_error(exc, path)
        except BaseException:  # the browser went away (ClientDisconnect, cancelled)
            cut = BadRequest(f"{path}: the upload was cut after {transfer.size} bytes")
            with anyio.CancelScope(shield=True):
                transfer.left = not await discard(client, handle, temp)
                await self._book.finished(transfer, cut)
            raise
        if error is not None:
            if isinstance(error, AgentTimeout) and not getattr(error, "keep", False):
                tidy_later(transfer, client, channel, handle)  # removed once the PC answers
            elif not isinstance(error, AgentTimeout):  # (kept: the old file may be gone)
                transfer.left = not await discard(client, handle, temp)
            await self._book.finished(transfer, error)
            raise error
        await self._book.finished(transfer, None)
