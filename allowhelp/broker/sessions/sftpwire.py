"""What the PC's sftp-server answers mean to the broker: errors, entries, renames.

Kept apart from ``files.py`` (who may, audit, streaming): these only translate
SFTP (asyncssh's client) into the broker's own errors and JSON, and do the few
steps of an upload around its bytes (its mode, its rename, the tidying up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import asyncssh

from allowhelp.broker.errors import (
    AgentUnreachable,
    BadRequest,
    BrokerError,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
)

log = logging.getLogger(__name__)

NEW_FILE_MODE = 0o600  # an upload to a new name: the PC user's alone
TIDY_TIMEOUT = 5.0  # for removing a session's temporary files as it ends


def sftp_error(exc: Exception, path: str) -> BrokerError:
    """What the PC said, as the broker's own error (one line, for the technician)."""
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
    if isinstance(exc, (asyncssh.Error, OSError, EOFError)):
        return AgentUnreachable(f"{path}: the connection to the PC's files broke: {exc}")
    return BrokerError(str(exc))


async def rename_onto(client: asyncssh.SFTPClient, temp: str, path: str) -> None:
    """Onto the final name, replacing a file already there (POSIX rename when offered)."""
    try:
        await client.posix_rename(temp.encode(), path.encode())
    except asyncssh.SFTPOpUnsupported:
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await client.remove(path.encode())
        await client.rename(temp.encode(), path.encode())


async def download_size(client: asyncssh.SFTPClient, path: str, max_file: int) -> int:
    """The size of the regular file at ``path``, or why it cannot be downloaded."""
    try:
        attrs = await client.stat(path.encode())
    except (asyncssh.Error, OSError, EOFError) as exc:
        raise sftp_error(exc, path) from exc
    if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
        raise BadRequest(f"{path}: is a folder, not a file", code="is_a_folder")
    if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
        raise BadRequest(f"{path}: not a regular file", code="not_a_file")
    size = attrs.size or 0
    if size > max_file:
        raise TooLarge(f"{path}: {size} bytes, more than the {max_file} bytes allowed")
    return size


async def upload_mode(client: asyncssh.SFTPClient, path: str, folder: str) -> int:
    """The permission bits for an upload to ``path``: those of the file it replaces
    (0600 stays 0600), else ``NEW_FILE_MODE``; or why it may not be written (a
    folder there, or no folder to put it in)."""
    try:
        try:
            attrs = await client.stat(path.encode())
        except asyncssh.SFTPNoSuchFile:
            attrs = None
        if attrs is not None and attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise BadRequest(f"{path}: is a folder", code="is_a_folder")
        if folder and not await client.isdir(folder.encode()):
            raise NotFound(f"{folder}: no such folder on the PC", code="no_such_folder")
    except (asyncssh.Error, OSError, EOFError) as exc:
        raise sftp_error(exc, path) from exc
    if attrs is None or attrs.permissions is None:
        return NEW_FILE_MODE
    return attrs.permissions & 0o777  # never set-user-ID and the like


async def discard(client: asyncssh.SFTPClient, handle: asyncssh.SFTPClientFile, temp: str) -> None:
    """Close and remove a cut upload's temporary file, as far as the PC lets."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIDY_TIMEOUT):
            with contextlib.suppress(asyncssh.Error, OSError, EOFError):
                await handle.close()
            with contextlib.suppress(asyncssh.Error, OSError, EOFError):
                await client.remove(temp.encode())


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


async def json_entries(
    first: asyncssh.SFTPName | None, rest: AsyncIterator[asyncssh.SFTPName], path: str
) -> AsyncIterator[bytes]:
    yield b"["
    comma = b""
    entry = first
    while entry is not None:
        raw = entry.filename
        name_bytes = raw if isinstance(raw, bytes) else raw.encode()
        if name_bytes not in (b".", b".."):
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
            yield comma + json.dumps(item, ensure_ascii=False).encode()
            comma = b","
        try:
            entry = await anext(rest, None)
        except (asyncssh.Error, OSError, EOFError) as exc:
            log.error("listing of %s cut: %s", path, exc)
            break
    yield b"]"
