"""Where the machine service's helper socket lives, and the checks on its folder.

The session helper and the CLI reach the machine service through this socket;
they check its folder before they trust what answers there, and the service
makes it (``listen_at``): a root-owned folder nobody else can write, the socket
itself mode 0666 (anyone may connect: ``SO_PEERCRED`` says who they are).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _

SYSTEM_CONFIG_DIR = Path("/etc/allowhelp/agent")
SYSTEM_SOCKET = Path("/run/allowhelp/agent.sock")
MAX_SOCKET_PATH = 107
BACKLOG = 16


def machine_socket(config_dir: Path | None) -> Path:
    """``/run/allowhelp/agent.sock`` for the machine folder; ``DIR/run/agent.sock``
    for another ``--config DIR`` (tests, a second service)."""
    if config_dir is None or config_dir.resolve() == SYSTEM_CONFIG_DIR:
        return SYSTEM_SOCKET
    return config_dir.resolve() / "run" / "agent.sock"


def check_socket_folder(folder: Path) -> None:
    """Refuse a socket folder that is not root's alone to write (someone else
    could put their own socket there)."""
    try:
        info = folder.lstat()
    except OSError as exc:
        raise AgentError(
            _("cannot use %(folder)s: %(error)s") % {"folder": folder, "error": exc.strerror or exc}
        ) from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise AgentError(_("%(folder)s is not a real directory: refusing it") % {"folder": folder})
    if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AgentError(
            _("%(folder)s is not root's alone to write: refusing it") % {"folder": folder}
        )


def listen_at(path: Path) -> socket.socket:
    """The helper socket at ``path``, listening and non-blocking, in a folder made
    (or found) root's alone to write; a stale socket file there is replaced."""
    folder = path.parent
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise AgentError(
            _("%(path)s is too long for a UNIX socket: use a shorter --config") % {"path": path}
        )
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # noqa: S103 - every user's helper must reach the socket
    check_socket_folder(folder)
    if folder.parent != Path("/run"):  # DIR/run: users may pass through DIR, not list it
        os.chmod(folder.parent, 0o711)  # noqa: S103 - pass through, no listing
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(str(path))
        # anyone may connect; SO_PEERCRED says who they are
        os.chmod(path, 0o666)  # noqa: S103
        listener.listen(BACKLOG)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener
