"""The PC agent's own folders, out of every files session's reach (``path_hidden``).

A files session is what the PC user can open, and a per-user agent's
configuration folder is the user's: its private host key there would let whoever
holds it connect to the broker *as that PC's agent*. So the agent names its own
folders in its Hello (``files_hidden``: absolute real paths, ``agent/hello.py``)
and the broker refuses every listing, download and upload whose path leads into
one of them, on the record first (``files.refused``, ``why: path_hidden``), then
403 ``path_hidden``. A listing of the folder above still shows the folder's name.

Where a path leads is the PC's own answer: SFTP ``realpath`` (OpenSSH's
sftp-server resolves every symbolic link and ``..`` on the way, as the PC user's
file system sees them), so a link the user made (``ln -s ~/.config/allowhelp
~/innocent``) leads where it points. An upload's path is its folder's real path
and the name: the upload renames its temporary file onto that name, replacing a
link there, never writing through it. A technician cannot make a link: the files
API only lists, reads, and writes whole regular files (a temporary file renamed).
Each ``realpath`` is one SFTP call like the others (``sftpwire.bounded``, the
stuck-PC probe).

What this does not see: a hard link or a bind mount of the folder made on the
PC, and a link swapped in between the check and the call (by someone at the PC).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import asyncssh

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import Forbidden, NotFound
from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.sftpwire import SFTP_ERRORS, bounded, sftp_error

WHY = "path_hidden"


def hidden_by(resolved: bytes, hidden: Sequence[str]) -> str | None:
    """The hidden folder ``resolved`` (an absolute real path) is or is inside, if any."""
    for folder in hidden:
        root = folder.encode()
        if resolved == root or resolved.startswith(root.rstrip(b"/") + b"/"):
            return folder
    return None


async def resolved(client: asyncssh.SFTPClient, path: str, limit: float, *, upload: bool) -> bytes:
    """Where ``path`` leads on the PC (an upload's: its folder's real path and its name)."""
    asked = path
    name = b""
    if upload:
        folder, last = posixpath.split(path.rstrip("/") or path)
        asked, name = folder or ".", last.encode()
    try:
        real = await bounded(client.realpath(asked.encode()), limit, path)
    except asyncssh.SFTPNoSuchFile as exc:
        if upload:  # as ``sftpwire.upload_mode`` says it
            raise NotFound(f"{asked}: no such folder on the PC", code="no_such_folder") from exc
        raise sftp_error(exc, path) from exc
    except SFTP_ERRORS as exc:
        raise sftp_error(exc, path) from exc
    return posixpath.join(real, name) if name else real


class HiddenFolders:
    """The check each files request passes before anything of it reaches its path."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def check(
        self,
        session: Session,
        username: str,
        client: asyncssh.SFTPClient,
        path: str,
        *,
        hidden: Sequence[str],
        limit: float,
        upload: bool = False,
    ) -> None:
        """Nothing when ``hidden`` is empty (a machine service, an older agent) or the
        path leads elsewhere; else ``files.refused`` on the record, then ``Forbidden``."""
        if not hidden:
            return
        real = await resolved(client, path, limit, upload=upload)
        folder = hidden_by(real, hidden)
        if folder is None:
            return
        await self._audit.write(
            "files.refused",
            actor=f"technician:{username}",
            target=session.id,
            details={
                **session.summary(),
                "path": path,
                "why": WHY,
                "resolved": real.decode("utf-8", "replace"),
                "hidden": folder,
            },
        )
        raise Forbidden(
            f"{path}: it leads into {folder}, the allowhelp agent's own folder,"
            " which is never shared",
            code=WHY,
        )
