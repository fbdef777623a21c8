"""What this PC says of itself when the tunnel opens: the ``Hello`` and its OS line.

Apart from ``enrol.py`` so that the running agent, which says hello on every
connect, does not load what only enrolment needs (``http.client``, the PKI,
the token): the idle agent's memory is what it imports (docs/benchmarks.md).
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


def os_description() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    system = os.uname()  # what platform.system() and platform.release() say
    return f"{system.sysname} {system.release}"


def current_hello() -> Hello:
    """What this PC is now: the logged-in user or the OS may have changed since enrolment,
    and what its session offers for screen sharing (probed once per process)."""
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
    )
