"""The PC's files for one granted ``files`` session: OpenSSH's ``sftp-server`` as the user.

Like the screen (``screen.py``), the program gets one end of a UNIX socketpair
as its stdin and stdout and the agent bridges the other end to the SSH
channel: nothing listens, and the broker speaks SFTP (version 3) to it.
``sftp-server`` is a well-kept program that does exactly this: it runs with
the rights of whoever starts it (the per-user agent, or the user's session
helper for the machine service), never as root, and it takes paths as data
(no shell ever sees one).

Options, and why:
    -e -l INFO     log each open/close (with byte counts) and rename on stderr;
                   the agent keeps the tail to say why it stopped
    -d HOME        start in the user's home: relative paths are theirs
    -P ...         requests refused outright: links (a link could point a
                   later upload somewhere else), owner/mode changes, the
                   server-side copy, and user/group lookups
    -R             a view-only grant (the technician asked for files, view only):
                   sftp-server refuses every write, the broker refuses uploads first
    -u UMASK       the user's own umask, as their session had it when the agent
                   started (``runtime.inherited_umask``; our processes run with
                   077): the broker asks for the replaced file's bits (an upload
                   over a 0600 file stays 0600, a 0644 one stays readable, an
                   executable executable) and 0600 for a new name; the umask can
                   only narrow that, and a broker that asks no mode gets what the
                   user's own tools would make
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch, child_environment
from allowhelp.runtime import inherited_umask

if TYPE_CHECKING:
    from allowhelp.agent.channels import Backend, GatedChannel
    from allowhelp.agent.consent import Grant

log = logging.getLogger(__name__)

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/openssh/sftp-server",  # Fedora, RHEL
    "/usr/lib/ssh/sftp-server",  # Arch
    "/usr/libexec/sftp-server",  # openSUSE, BSD layouts
)
REFUSED_REQUESTS = (
    "symlink",
    "hardlink",
    "setstat",
    "fsetstat",
    "lsetstat",
    "copy-data",
    "users-groups-by-id",
)


class FilesUnavailable(RuntimeError):
    """This PC cannot exchange files; the message says why, for the technician."""


def find_sftp_server(candidates: tuple[str, ...] = SFTP_SERVERS) -> str:
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("sftp-server")
    if found:
        return found
    raise FilesUnavailable("no sftp-server on this PC (Debian: apt install openssh-sftp-server)")


def files_command(uid: int | None = None, *, read_only: bool = False) -> list[str]:
    """The sftp-server to run for a grant, as the current user; never as root;
    ``read_only`` for a view-only grant."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        raise FilesUnavailable("files are exchanged as the signed-in user, never as root")
    home = pwd.getpwuid(uid).pw_dir
    if not os.path.isdir(home):
        home = "/"
    program = find_sftp_server()
    umask = f"{inherited_umask():03o}"
    argv = [program, "-e", "-l", "INFO", "-d", home, "-u", umask]
    return [*argv, *(["-R"] if read_only else []), "-P", ",".join(REFUSED_REQUESTS)]


def files_environment(env: Mapping[str, str]) -> dict[str, str]:
    kept = child_environment(env)
    kept.pop("DISPLAY", None)
    kept.pop("XAUTHORITY", None)
    return kept


def explain_files_exit(status: int, stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    how = f"signal {-status}" if status < 0 else f"status {status}"
    return f"the file server stopped ({how})" + (f": {last[:300]}" if last else "")


def files_factory(channel: GatedChannel, grant: Grant) -> Backend:
    """``FilesFactory`` for the per-user agent: sftp-server as this agent's user."""

    def exited(status: int, stderr: bytes) -> None:
        error = explain_files_exit(status, stderr) if status != 0 else None
        if error:
            log.error("session=%s files failed: %s", grant.session_id, error)
        channel.finish(status, error)

    argv = files_command(read_only=grant.view_only)  # FilesUnavailable
    try:
        return ScreenProcess(channel, PairLaunch(argv, files_environment(os.environ)), exited)
    except OSError as exc:
        raise FilesUnavailable(f"the file server could not start: {exc.strerror or exc}") from exc
