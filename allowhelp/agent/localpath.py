"""Where the per-user agent's control socket lives, checked; and binding it.

Light (no asyncio): the doorbell (``doorbell.py``) binds this socket itself and
hands it to the full agent it starts (socket activation, ``ALLOWHELP_LISTEN_FDS``);
the full agent binds it only when it was handed none.

Where the socket lives: ``$XDG_RUNTIME_DIR/allowhelp`` when the session has a
runtime folder, else ``~/.cache/allowhelp/run`` in the account's own home
(from the password database, not ``$HOME``). Never a fixed name in /tmp: any
local user could create that first and lock the owner out. Either folder is
used only when it is a real directory (not a symlink) owned by the user and
writable by nobody else; anything else is refused with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import socket
import stat
from pathlib import Path

from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _

BACKLOG = 100  # asyncio.start_unix_server's default
# Sockets the doorbell bound and handed down: "local=5,machine=6" (docs/design.md).
LISTEN_FDS_ENV = "ALLOWHELP_LISTEN_FDS"
# Connections the doorbell accepted on the machine socket and kept for the full agent
# (session helpers parked while nobody was being helped): "7,8".
ADOPT_FDS_ENV = "ALLOWHELP_ADOPT_FDS"
MAX_ADOPTED = 64  # the machine service's own connection limit

FALLBACK_RUN_DIR = Path(".cache", "allowhelp", "run")
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL


def runtime_dir() -> Path:
    """The user's private folder for the control socket, made and checked here."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        folder = Path(base) / "allowhelp"
    else:
        home = Path(pwd.getpwuid(os.getuid()).pw_dir)
        if not home.is_dir():
            raise AgentError(
                _(
                    "no folder for the control socket: XDG_RUNTIME_DIR is not set "
                    "and your home folder %(home)s does not exist"
                )
                % {"home": home}
            )
        folder = home / FALLBACK_RUN_DIR
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something that is not a directory: the check says what
    except OSError as exc:
        raise AgentError(
            _("cannot create %(folder)s: %(error)s")
            % {"folder": folder, "error": exc.strerror or exc}
        ) from exc
    _check_private(folder)
    return folder


def _check_private(folder: Path) -> None:
    """Refuse ``folder`` unless it is a real directory of ours that no one else can
    write; then make it 0700. Reopened without following symlinks and checked
    again, so the folder made 0700 is the folder that was checked."""
    try:
        _refuse_unless_private(folder, folder.lstat())
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AgentError(
            _("cannot use %(folder)s: %(error)s") % {"folder": folder, "error": exc.strerror or exc}
        ) from exc
    try:
        info = os.fstat(fd)
        _refuse_unless_private(folder, info)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _refuse_unless_private(folder: Path, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise AgentError(
            _("%(folder)s is a symlink: refusing to use it; remove it and start again")
            % {"folder": folder}
        )
    if not stat.S_ISDIR(info.st_mode):
        raise AgentError(
            _("%(folder)s is not a directory: refusing to use it; remove it") % {"folder": folder}
        )
    if info.st_uid != os.getuid():
        raise AgentError(
            _("%(folder)s belongs to uid %(uid)s, not to you: refusing to use it")
            % {"folder": folder, "uid": info.st_uid}
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AgentError(
            _(
                "%(folder)s is writable by other users: refusing to use it; "
                "`chmod 700 %(folder)s` or remove it"
            )
            % {"folder": folder}
        )


def socket_path(config_dir: Path) -> Path:
    """One socket per configuration folder, so two agents of one user never mix."""
    digest = hashlib.sha256(str(config_dir.resolve()).encode()).hexdigest()[:16]
    path = runtime_dir() / f"agent-{digest}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise AgentError(
            _("%(path)s is too long for a UNIX socket: set XDG_RUNTIME_DIR") % {"path": path}
        )
    return path


def bind_local(path: Path) -> socket.socket:
    """The control socket at ``path``, listening (0600 from the start: bound under a
    umask that lets nobody else in); a stale socket file there is replaced."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(BACKLOG)
    except BaseException:
        listener.close()
        raise
    finally:
        os.umask(old)
    return listener


def parse_listen_fds(text: str) -> dict[str, int]:
    """``name=fd,name=fd`` → {name: fd}; ``ValueError`` saying what is wrong."""
    found: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, equals, number = item.partition("=")
        if not equals or not name or not number.isdigit() or int(number) < 3:
            raise ValueError(f"{LISTEN_FDS_ENV} has a bad entry {item!r} (want name=fd)")
        found[name] = int(number)
    return found


def inherited_listener(name: str, kind: int = socket.SOCK_STREAM) -> socket.socket | None:
    """The listening socket the doorbell handed down under ``name``, or None. Taken
    once: it is made close-on-exec and its name leaves the environment, so that no
    program this agent starts (a technician's shell) holds or names it."""
    named = parse_listen_fds(os.environ.get(LISTEN_FDS_ENV, ""))
    fd = named.pop(name, None)
    if fd is None:
        return None
    if named:
        os.environ[LISTEN_FDS_ENV] = ",".join(f"{n}={number}" for n, number in named.items())
    else:
        os.environ.pop(LISTEN_FDS_ENV, None)
    try:
        listener = socket.socket(fileno=fd)
    except OSError as exc:
        # only the doorbell sets it: said in English, like the log
        raise AgentError(f"{LISTEN_FDS_ENV} names {fd}, which is not a socket") from exc
    if listener.family != socket.AF_UNIX or listener.type != kind:
        listener.detach()
        raise AgentError(f"{LISTEN_FDS_ENV} names {fd}, which is not the agent's socket")
    listener.set_inheritable(False)
    return listener


def adopted_connections() -> list[socket.socket]:
    """The machine socket's connections the doorbell accepted and handed down (the
    session helpers it parked, their first packet unread). Taken once, as
    ``inherited_listener``; anything that is not a connected Unix seqpacket socket is
    closed and left out (said in the log by the caller's accept path, not here)."""
    text = os.environ.pop(ADOPT_FDS_ENV, "")
    found: list[socket.socket] = []
    for part in text.split(",")[:MAX_ADOPTED]:
        if not part.isdigit():
            continue
        try:
            conn = socket.socket(fileno=int(part))
        except OSError:
            continue
        if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_SEQPACKET:
            conn.detach()  # not ours to close: the number named something else
            continue
        conn.set_inheritable(False)
        found.append(conn)
    return found
