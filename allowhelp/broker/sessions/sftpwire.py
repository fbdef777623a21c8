"""What the PC's sftp-server answers mean to the broker: errors, entries, renames.

Kept apart from ``files.py`` (who may, audit, streaming): these only translate
SFTP (asyncssh's client) into the broker's own errors and JSON, and do the few
steps of an upload around its bytes (its mode, its rename, the tidying up).

Every call to the PC has a time limit of its own (``bounded``, ``CALL_TIMEOUT``;
for a stream, each chunk): a stuck network mount under the PC's sftp-server ends
the request with ``AgentTimeout`` (504 ``pc_not_answering``), never holds it until
the session ends. The call itself is left to finish on its own, not cancelled
(asyncssh's own tidying up, such as a listing's close, would wait for the PC too);
a file it opens late is closed when it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncssh

from allowhelp.broker.errors import (
    AgentTimeout,
    AgentUnreachable,
    BadRequest,
    BrokerError,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

NEW_FILE_MODE = 0o600  # an upload to a new name: the PC user's alone
TIDY_TIMEOUT = 5.0  # for removing a session's temporary files as it ends
LATE_TIDY_TIMEOUT = 600.0  # for removing a temporary file once a PC that stopped answering does
CALL_TIMEOUT = 30.0  # seconds the PC has for each SFTP call (a stream: for each chunk)
MAX_HELD = 10_000  # a listing's entries held before its answer starts (then streamed)
HOLD_FOR = 10.0  # ... or the seconds spent reading them (a node relaying waits 60 s a byte)
SFTP_ERRORS = (asyncssh.Error, OSError, EOFError)
_left: set[asyncio.Future[Any]] = set()  # calls given up on, still waiting for the PC


def not_answering(path: str, limit: float) -> AgentTimeout:
    return AgentTimeout(f"{path}: the PC's file system did not answer in {limit:g} s")


async def bounded(
    call: Awaitable[T],
    limit: float,
    path: str,
    late: Callable[[T], Awaitable[object]] | None = None,
) -> T:
    """``call``'s answer within ``limit`` seconds, else ``AgentTimeout``. A call
    given up on (the limit, or the request cut) goes on alone; ``late`` gets what
    it answers after all (a file opened late, to close it)."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.wait_for(asyncio.shield(task), limit)
    except TimeoutError:
        _leave(task, late)
        raise not_answering(path, limit) from None
    except BaseException:
        _leave(task, late)
        raise


def _leave(task: asyncio.Future[T], late: Callable[[T], Awaitable[object]] | None) -> None:
    if task.done():  # answered just as the limit ran out (or the request was cut)
        if not task.cancelled() and task.exception() is None and late is not None:
            later(late(task.result()))  # a file opened all the same: closed
        return
    _left.add(task)

    def answered(done: asyncio.Future[T]) -> None:
        _left.discard(done)
        if done.cancelled() or done.exception() is not None or late is None:
            return
        later(late(done.result()))

    task.add_done_callback(answered)


def later(step: Awaitable[object], wait: float = TIDY_TIMEOUT) -> None:
    """A tidying step on the PC (close, remove) left to run on its own, at most
    ``wait`` seconds (the session's end stops it sooner); it fails quietly."""
    task = asyncio.ensure_future(_quietly(step, wait))
    _left.add(task)
    task.add_done_callback(_left.discard)


async def _quietly(step: Awaitable[object], wait: float) -> None:
    with contextlib.suppress(TimeoutError, *SFTP_ERRORS):
        async with asyncio.timeout(wait):
            await step


async def close_late(handle: asyncssh.SFTPClientFile) -> None:
    """A file the PC opened after the broker gave up on it: closed."""
    await handle.close()


async def open_file(
    client: asyncssh.SFTPClient, path: str, mode: str, limit: float, permissions: int = 0o600
) -> asyncssh.SFTPClientFile:
    """``path`` opened on the PC within ``limit`` (a file it opens later is closed);
    what the PC says against it as the broker's own error."""
    opening = client.open(path.encode(), mode, asyncssh.SFTPAttrs(permissions=permissions))
    try:
        return await bounded(opening, limit, path, close_late)
    except SFTP_ERRORS as exc:
        raise sftp_error(exc, path) from exc


def sftp_error(exc: BaseException, path: str) -> BrokerError:
    """What the PC said, as the broker's own error (one line, for the technician)."""
    return exc if isinstance(exc, BrokerError) else _pc_error(exc, path)  # AgentTimeout: ours


def _pc_error(exc: BaseException, path: str) -> BrokerError:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return NotFound(f"{path}: no such file or folder on the PC", code="no_such_file")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return Forbidden(f"{path}: the PC user may not open it", code="permission_denied")
    if isinstance(exc, asyncssh.SFTPOpUnsupported):
        return Conflict(f"{path}: the PC refuses this operation", code="unsupported")
    if isinstance(exc, asyncssh.SFTPError):
        why = exc.reason or "refused"
        if why.lower() == "failure":  # sftp-server says only this for ENOSPC, EISDIR, ...
            why = "the PC could not do it (disk full, or not a regular file?)"
        return Conflict(f"{path}: {why}", code="pc_refused")
    if isinstance(exc, SFTP_ERRORS):
        return AgentUnreachable(f"{path}: the connection to the PC's files broke: {exc}")
    return BrokerError(str(exc))


class UnsureRename(AgentTimeout):
    """An upload's bytes are all on the PC, but its last step did not answer in time:
    sftp-server serves calls in order, so it may land yet, and what ``path`` holds is
    not known. Its record keeps the upload's SHA-256 and says so (``outcome``).
    ``keep``: the old file's removal did not answer (a server without POSIX rename):
    the rename is never sent, and the upload stays under its temporary name."""

    def __init__(self, message: str, outcome: str, *, keep: bool = False) -> None:
        super().__init__(message)
        self.outcome, self.keep = outcome, keep


MAY_RENAME = "unknown: the PC may still rename it onto the path"


def unsure(error: BaseException | None) -> dict[str, str]:
    """What an upload's record adds when its outcome is not known (else nothing)."""
    return {"outcome": error.outcome} if isinstance(error, UnsureRename) else {}


async def rename_onto(client: asyncssh.SFTPClient, temp: str, path: str, limit: float) -> None:
    """Onto the final name, replacing a file already there (POSIX rename when offered);
    ``UnsureRename`` when the PC does not answer it in time."""
    try:
        try:
            await bounded(client.posix_rename(temp.encode(), path.encode()), limit, path)
        except AgentTimeout as exc:
            raise UnsureRename(exc.message, MAY_RENAME) from None
    except asyncssh.SFTPOpUnsupported:
        try:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await bounded(client.remove(path.encode()), limit, path)
        except AgentTimeout as exc:
            kept = f"unknown: the PC may still remove the old file; the upload is kept as {temp}"
            raise UnsureRename(exc.message, kept, keep=True) from None
        try:
            await bounded(client.rename(temp.encode(), path.encode()), limit, path)
        except AgentTimeout as exc:
            raise UnsureRename(exc.message, MAY_RENAME) from None


async def download_size(client: asyncssh.SFTPClient, path: str, max_file: int, limit: float) -> int:
    """The size of the regular file at ``path``, or why it cannot be downloaded."""
    try:
        attrs = await bounded(client.stat(path.encode()), limit, path)
    except SFTP_ERRORS as exc:
        raise sftp_error(exc, path) from exc
    if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
        raise BadRequest(f"{path}: is a folder, not a file", code="is_a_folder")
    if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
        raise BadRequest(f"{path}: not a regular file", code="not_a_file")
    size = attrs.size or 0
    if size > max_file:
        raise TooLarge(f"{path}: {size} bytes, more than the {max_file} bytes allowed")
    return size


async def upload_mode(client: asyncssh.SFTPClient, path: str, folder: str, limit: float) -> int:
    """The permission bits for an upload to ``path``: those of the file it replaces
    (0600 stays 0600), else ``NEW_FILE_MODE``; or why it may not be written (a
    folder there, or no folder to put it in)."""
    try:
        try:
            attrs = await bounded(client.stat(path.encode()), limit, path)
        except asyncssh.SFTPNoSuchFile:
            attrs = None
        if attrs is not None and attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise BadRequest(f"{path}: is a folder", code="is_a_folder")
        if folder and not await bounded(client.isdir(folder.encode()), limit, folder):
            raise NotFound(f"{folder}: no such folder on the PC", code="no_such_folder")
    except SFTP_ERRORS as exc:
        raise sftp_error(exc, path) from exc
    if attrs is None or attrs.permissions is None:
        return NEW_FILE_MODE
    return attrs.permissions & 0o777  # never set-user-ID and the like


async def discard(
    client: asyncssh.SFTPClient,
    handle: asyncssh.SFTPClientFile | None,
    temp: str,
    wait: float = TIDY_TIMEOUT,
) -> bool:
    """Close and remove a cut upload's temporary file, as far as the PC lets
    (``wait`` seconds at most): whether it is gone."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            if handle is not None:
                with contextlib.suppress(*SFTP_ERRORS):
                    await handle.close()
            try:
                await client.remove(temp.encode())
            except asyncssh.SFTPNoSuchFile:
                return True
            except SFTP_ERRORS:
                return False
            return True
    return False


async def remove_then_exit(client: asyncssh.SFTPClient, temps: set[str]) -> None:
    """Remove what uploads cut by a session's end left (``TIDY_TIMEOUT`` at most),
    then close the session's SFTP client."""
    try:
        if temps:
            await asyncio.wait_for(_remove_all(client, temps), TIDY_TIMEOUT)
    except (TimeoutError, asyncssh.Error, OSError, EOFError) as exc:
        log.error("temporary files %s not removed: %s", sorted(temps), exc or "timed out")
    finally:
        client.exit()


async def _remove_all(client: asyncssh.SFTPClient, temps: set[str]) -> None:
    for temp in temps:
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):  # renamed or removed meanwhile
            await client.remove(temp.encode())


def entry_type(attrs: asyncssh.SFTPAttrs) -> str:
    return {
        asyncssh.FILEXFER_TYPE_REGULAR: "file",
        asyncssh.FILEXFER_TYPE_DIRECTORY: "dir",
        asyncssh.FILEXFER_TYPE_SYMLINK: "link",
    }.get(attrs.type or 0, "other")


def entry_json(entry: asyncssh.SFTPName) -> bytes | None:
    """One listing entry as JSON (None for ``.`` and ``..``)."""
    raw = entry.filename
    name_bytes = raw if isinstance(raw, bytes) else raw.encode()
    if name_bytes in (b".", b".."):
        return None
    item: dict[str, object] = {
        "name": name_bytes.decode("utf-8", "replace"),
        "type": entry_type(entry.attrs),
        "size": entry.attrs.size,
        "mtime": entry.attrs.mtime,
    }
    try:
        name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        item["name_not_utf8"] = True  # shown; cannot be asked for by this name
    return json.dumps(item, ensure_ascii=False).encode()


def listing_cut(exc: BaseException, path: str, count: int) -> BrokerError:
    """A listing that broke after ``count`` entries: ``listing_cut``, with what broke
    (504 when the PC stopped answering, as ``pc_not_answering``)."""
    error = sftp_error(exc, path)
    why = f"{path}: the listing is incomplete, cut after {count} entries: {error.message}"
    return type(error)(why, code="listing_cut")


async def list_folder(
    client: asyncssh.SFTPClient, path: str, limit: float, max_held: int = MAX_HELD
) -> AsyncIterator[bytes]:
    """The folder as a JSON array. Up to ``max_held`` entries (or ``HOLD_FOR``
    seconds' worth) are read before the answer starts: a folder read that far is
    whole, or an error (no such
    folder, a file, no right; ``listing_cut`` when it broke mid-way). A larger one
    streams on, and a cut after that ends the answer without its ``]`` and drops
    the connection: never a well-formed array that is not the whole folder."""
    try:
        attrs = await bounded(client.stat(path.encode()), limit, path)
        if attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise BadRequest(f"{path}: not a folder", code="not_a_folder")
        entries = client.scandir(path.encode())
    except SFTP_ERRORS as exc:
        raise sftp_error(exc, path) from exc
    held: list[bytes] = []
    read = False  # anything of the folder yet (its "." comes first)
    until = asyncio.get_running_loop().time() + HOLD_FOR
    while len(held) < max(max_held, 1) and (not held or asyncio.get_running_loop().time() < until):
        try:
            entry = await bounded(anext(entries, None), limit, path)
        except (AgentTimeout, *SFTP_ERRORS) as exc:
            if not read:  # the folder could not be opened or read at all
                raise sftp_error(exc, path) from exc
            raise listing_cut(exc, path, len(held)) from exc
        if entry is None:
            return _whole(held)
        read = True
        if (item := entry_json(entry)) is not None:
            held.append(item)
    return _streamed(held, entries, path, limit)


async def _whole(held: list[bytes]) -> AsyncIterator[bytes]:
    yield b"[" + b",".join(held) + b"]"


async def _streamed(
    held: list[bytes], entries: AsyncIterator[asyncssh.SFTPName], path: str, limit: float
) -> AsyncIterator[bytes]:
    yield b"[" + b",".join(held)
    count = len(held)
    while True:
        try:
            entry = await bounded(anext(entries, None), limit, path)
        except (AgentTimeout, *SFTP_ERRORS) as exc:
            error = listing_cut(exc, path, count)
            log.error("%s (the answer is cut short)", error)
            raise error from exc  # the answer ends without its "]"
        if entry is None:
            break
        if (item := entry_json(entry)) is not None:
            count += 1
            yield b"," + item
    yield b"]"
