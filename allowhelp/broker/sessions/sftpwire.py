"""What the PC's sftp-server answers mean to the broker: errors, entries, renames.

Kept apart from ``files.py`` (who may, audit, streaming): these only translate
SFTP (asyncssh's client) into the broker's own errors and JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import asyncssh

from allowhelp.broker.errors import AgentUnreachable, BrokerError, Conflict, Forbidden, NotFound

log = logging.getLogger(__name__)


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
