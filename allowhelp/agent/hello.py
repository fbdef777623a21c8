"""What this PC says of itself when the tunnel opens: the ``Hello`` and its OS line.

Apart from ``enrol.py`` so that the running agent, which says hello on every
connect, does not load what only enrolment needs (``http.client``, the PKI,
the token): the idle agent's memory is what it imports (docs/benchmarks.md).

A per-user agent's configuration folder (its host key, its doorbell key) is the
user's own, so a files session could read it: the Hello names it (``files_hidden``)
and the broker refuses every files request whose path resolves into it.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from allowhelp import __version__
from allowhelp.agent.desktop import this_session
from allowhelp.agent.i18n import user_language
from allowhelp.protocol.control import Hello
from allowhelp.protocol.control_limits import LIMITS


def os_description() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    system = os.uname()  # what platform.system() and platform.release() say
    return f"{system.sysname} {system.release}"


def hidden_folder(folder: Path) -> str:
    """``folder`` as files sessions must never reach it: its real path (links resolved,
    as the PC's sftp-server resolves a request's path), or its nearest parent the
    Hello can carry (UTF-8, ``LIMITS["files_hidden"]`` characters): more hidden, never less."""
    real = os.path.realpath(folder)
    while real != "/":
        try:
            real.encode()
        except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate-escaped)
            real = os.path.dirname(real)
            continue
        if len(real) <= LIMITS["files_hidden"]:
            break
        real = os.path.dirname(real)
    return real


def current_hello(folder: Path | None = None) -> Hello:
    """What this PC is now: the logged-in user or the OS may have changed since enrolment,
    and what its session offers for screen sharing (probed once per process). ``folder``:
    the per-user agent's configuration folder, hidden from files sessions."""
    offer = this_session()
    return Hello(
        hostname=socket.gethostname(),
        os=os_description(),
        user=getpass.getuser(),
        version=__version__,
        language=user_language(),
        screen=offer.engine,
        screen_problem=offer.problem,
        desktop=offer.desktop,
        chat=True,
        monitors=offer.monitors,
        invites=True,
        all_monitors=True,
        nodes=True,
        files_view_only=True,
        files_hidden=() if folder is None else (hidden_folder(folder),),
    )
