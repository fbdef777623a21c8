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

Whatever the Hello says (a machine service's names nothing, an older agent's
neither), the signed-in user's *default* agent folder is hidden too: a user who
enrolled an agent of their own beside the machine service keeps its key there.
sftp-server starts in the user's home, so the broker asks it once per files
channel where ``.config/allowhelp/agent`` and ``.`` lead (``UsersOwn``, kept on
the channel); while the folder's place cannot be resolved (``.config/allowhelp``
missing) it asks again on each request, so a folder made during the session is
hidden from then on; and ``<home>/.config/allowhelp/agent`` is always hidden.

The comparison is case-folded too (hides more, never less): on a case-insensitive
file system (SMB/CIFS homes, vfat/exFAT/ntfs3, ext4 casefold) ``realpath`` keeps
the request's spelling, ``.CONFIG/allowhelp/AGENT/host_key`` included.

What this does not see: a second path to the folder that is not a link (a hard
link, a bind mount, autofs, ``/home`` bind-mounted from ``/srv/home``, a btrfs
snapshot) made on the PC, and a link swapped in between the check and the call
(by someone at the PC).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import Forbidden, NotFound
from allowhelp.broker.model.session import Session
from allowhelp.broker.sessions.sftpwire import SFTP_ERRORS, bounded, sftp_error

WHY = "path_hidden"
DEFAULT = ".config/allowhelp/agent"  # the per-user agent's folder in the home


def _text(real: bytes) -> str:
    return real.decode("utf-8", "surrogateescape")


def shown(text: str) -> str:
    """``text`` as a record or a message may carry it: a name that is not UTF-8 (kept
    surrogate-escaped for the comparison) with U+FFFD in its place."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def hidden_by(resolved: bytes, hidden: Sequence[str]) -> str | None:
    """The hidden folder ``resolved`` (an absolute real path) is or is inside, if
    any: byte for byte, or case-folded (a case-insensitive file system)."""
    path = _text(resolved)
    folded = path.casefold()
    for folder in hidden:
        if _inside(path, folder) or _inside(folded, folder.casefold()):
            return folder
    return None


@dataclass
class UsersOwn:
    """The signed-in user's default agent folder, as one files channel's sftp-server
    resolves it (asked once; again on each request while it cannot be resolved)."""

    home: str | None = None  # realpath(".") (sftp-server starts in the home)
    folder: str | None = None  # realpath(DEFAULT), once it answers

    async def folders(self, client: asyncssh.SFTPClient, limit: float) -> list[str]:
        """Where the default folder is: its real path and ``<home>/DEFAULT``."""
        if self.home is None:
            self.home = _text(await _realpath(client, ".", limit))
        if self.folder is None:
            # ``.config/allowhelp`` missing: nothing there yet, asked again next time
            with contextlib.suppress(*SFTP_ERRORS):
                self.folder = _text(await _realpath(client, DEFAULT, limit))
        found = [posixpath.join(self.home, DEFAULT)]
        return found if self.folder is None else [self.folder, *found]


async def _realpath(client: asyncssh.SFTPClient, path: str, limit: float) -> bytes:
    return await bounded(client.realpath(path.encode()), limit, path)


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
        own: UsersOwn,
        limit: float,
        upload: bool = False,
    ) -> None:
        """Nothing when the path leads elsewhere than ``hidden`` (the Hello's) and the
        user's default agent folder (``own``); else ``files.refused`` on the record,
        then ``Forbidden``."""
        try:
            defaults = await own.folders(client, limit)
        except SFTP_ERRORS as exc:
            raise sftp_error(exc, path) from exc
        real = await resolved(client, path, limit, upload=upload)
        folder = hidden_by(real, [*hidden, *defaults])
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
                "hidden": shown(folder),
            },
        )
        raise Forbidden(
            f"{path}: it leads into {shown(folder)}, the allowhelp agent's own folder,"
            " which is never shared",
            code=WHY,
        )
