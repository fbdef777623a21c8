"""The wlroots engine: wayvnc on a UNIX socket in a folder private to the user.

wayvnc (0.5, Debian 12) cannot speak RFB on its stdio as x11vnc does, but it
can listen on a UNIX socket instead of TCP (``--unix-socket``). The agent makes
a fresh folder in the user's runtime folder (``$XDG_RUNTIME_DIR``, 0700, the
user's alone), starts wayvnc on a socket there, waits until the socket answers,
connects once, and from then on the connected socket is bridged exactly like
x11vnc's socketpair end (or handed to the machine service). No TCP port is ever
opened; nobody but the user (and root) can reach the socket; the folder goes
with the session.

The options, and why:
    --config=/dev/null   a user's ~/.config/wayvnc/config must not add an
                         address, a port or its own authentication
    --unix-socket PATH   RFB on that socket, no TCP
    --disable-input      a view-only grant (the agent filters input too)
    --output=NAME        the monitor the technician picked (default: wayvnc's first)
    --render-cursor      the pointer is painted into the picture: a technician
                         watching must see where the user points
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

WAYVNC = "wayvnc"
SOCKET_NAME = "rfb.sock"
START_TIMEOUT = 10.0
POLL = 0.02
KEEP_ENV = (
    "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_TYPE",
    "XDG_CURRENT_DESKTOP",
    "HOME",
    "USER",
    "LOGNAME",
    "PATH",
    "LANG",
    "LC_ALL",
    "XKB_DEFAULT_LAYOUT",
)


def wayvnc_argv(program: str, socket_path: str, *, view_only: bool, output: str = "") -> list[str]:
    argv = [program, "--config=/dev/null", "--unix-socket", "--render-cursor"]
    if view_only:
        argv.append("--disable-input")
    if output:
        argv.append(f"--output={output}")
    argv.append(socket_path)
    return argv


def runtime_folder(env: Mapping[str, str]) -> Path:
    """The user's runtime folder, checked: theirs, 0700; else a RuntimeError saying why."""
    value = env.get("XDG_RUNTIME_DIR", "")
    if not value:
        raise RuntimeError("the Wayland session has no XDG_RUNTIME_DIR")
    folder = Path(value)
    try:
        info = folder.stat()
    except OSError as exc:
        raise RuntimeError(f"XDG_RUNTIME_DIR {value} cannot be used: {exc.strerror}") from exc
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise RuntimeError(f"XDG_RUNTIME_DIR {value} is not private to this user")
    return folder


def wayvnc_program(env: Mapping[str, str]) -> str:
    """wayvnc on the session's PATH (else the system's); RuntimeError when there is none."""
    program = shutil.which(WAYVNC, path=env.get("PATH") or os.defpath)
    if program is None:
        raise RuntimeError("wayvnc is not installed on this PC (Debian: apt install wayvnc)")
    return program


def wayvnc_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What wayvnc is given of the session's environment (a PATH at least)."""
    kept = {key: env[key] for key in KEEP_ENV if key in env}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


def private_folder(env: Mapping[str, str]) -> Path:
    """A fresh ``allowhelp-screen-XXXX`` (0700) in the user's checked runtime folder."""
    return Path(tempfile.mkdtemp(prefix="allowhelp-screen-", dir=runtime_folder(env)))


class WayvncLaunch:
    """One wayvnc; ``connect`` gives the viewer's socket once it answers.

    Alone (one monitor, the agent's own launch): in a private folder of its own,
    removed by ``cleanup``, in a process group of its own, its last words on a
    pipe. One of several (``wayvncall``): ``folder``, the socket's ``name`` and
    where it says things are its owner's, in its owner's process group."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        view_only: bool,
        output: str = "",
        folder: Path | None = None,
        name: str = SOCKET_NAME,
        stderr: int | IO[bytes] = subprocess.PIPE,
    ) -> None:
        program = wayvnc_program(env)
        self._own_folder = folder is None
        self.folder = private_folder(env) if folder is None else folder
        self.socket_path = self.folder / name
        try:
            self.proc = subprocess.Popen(
                wayvnc_argv(program, str(self.socket_path), view_only=view_only, output=output),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=wayvnc_environment(env),
                cwd=self.folder,
                start_new_session=self._own_folder,
                close_fds=True,
            )
        except BaseException:  # OSError, or a SIGTERM's SystemExit in the engine
            self.cleanup()
            raise

    async def connect(self) -> socket.socket:
        """The connected socket, once wayvnc listens; RuntimeError when it exits or stalls."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("wayvnc exited before it served the screen")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            else:
                return sock
            if time.monotonic() > deadline:
                raise RuntimeError(f"wayvnc did not open its socket in {START_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL)

    def cleanup(self) -> None:
        """Its socket goes (wayvnc removes it itself when it can), and its own folder."""
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
        if self._own_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()
