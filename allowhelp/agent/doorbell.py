"""``run --idle doorbell``: the idle agent holds one HTTPS stream, not an SSH tunnel.

Standard library only (``tests/house/test_idle_imports.py``): no asyncio, no
asyncssh, no cryptography, so that an idle PC spends a small Python process on
allowhelp (issue #19; docs/design.md, "The doorbell"). It:

- reads ``doorbell.json`` (the key the full agent was sent) and POSTs the last
  ``hello.json`` to ``/api/v1/agent/doorbell``; the broker lists the PC online
  while that stream stands, and writes ``{"type": "ring"}`` when it needs the PC;
  the machine service's rings in again when who is signed in changes while it
  idles (``doorbellfresh.py``); every broker node is tried as the tunnel tries
  them (``doorbellnodes.py``);
- starts the full agent (the same command line with ``--idle woken``) when it
  has no key, when the broker rings, when the broker refuses the key (401: the
  key is deleted first) and when a local client connects to a socket it holds;
- binds the agent's local sockets itself and hands them down
  (``ALLOWHELP_LISTEN_FDS``), watching them while no full agent runs;
- refuses, at its start, a proxy setting that can never work (``https_proxy`` or
  ``agent.json``'s ``proxy``: not an ``http://`` URL, a bad port ...), in the full
  agent's one line and exit status; a proxy that is down is a failed ring, dialled
  again after the backoff;
- forwards SIGTERM/SIGINT to the full agent, waits for it, exits 0; re-executes
  itself after a package upgrade (``upgrade.py``'s mark) while no full agent runs.

The loop is ``doorbellloop.py``. The full agent exits by itself once idle for
``--linger`` seconds (``linger.py``). The token is never logged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbellloop import UPGRADED_FILE, Doorbell
from allowhelp.agent.localpath import bind_local, socket_path
from allowhelp.agent.proxyurl import check_setting


def woken_command(argv: Sequence[str], orig_argv: Sequence[str], executable: str) -> list[str]:
    """The full agent's command line: this one, with ``--idle woken`` last (argparse
    takes the last value). The interpreter's own arguments (``-m``, ``-c``, a script)
    are kept when ``argv`` is what this process was started with."""
    argv = list(argv)
    tail = list(orig_argv[len(orig_argv) - len(argv) :]) if argv else []
    prefix = list(orig_argv[1 : len(orig_argv) - len(argv)]) if tail == argv else []
    if not prefix:
        prefix = ["-m", "allowhelp.agent.cli"]
    return [executable, *prefix, *argv, "--idle", "woken"]


def bind_listeners(folder: Path, *, system: bool) -> dict[str, socket.socket]:
    """The sockets the full agent would bind, bound here (handed down when it starts)."""
    if system:
        from allowhelp.agent.machinesocket import listen_at, machine_socket  # noqa: PLC0415

        return {"machine": listen_at(machine_socket(folder))}
    return {"local": bind_local(socket_path(folder))}


def run_doorbell(
    folder: Path, argv: Sequence[str], *, system: bool, reconnect_cap: float = 30.0
) -> int:
    """``run --idle doorbell`` (``cli.py``): until SIGTERM or SIGINT; 0 then."""
    config = AgentConfig.load(folder)
    # Read once, as the full agent does: a setting that can never work is one line and
    # exit 2 now, not a failed ring (and a failed full agent) at every try.
    check_setting(config.dialled_hosts, config.proxy)
    with contextlib.suppress(OSError):  # this process runs the installed version
        (folder / UPGRADED_FILE).unlink()
    listeners = bind_listeners(folder, system=system)
    command = woken_command(argv, sys.orig_argv, sys.executable)
    try:
        return Doorbell(folder, config, command, listeners, reconnect_cap).run()
    finally:
        for listener in listeners.values():
            path = listener.getsockname()
            listener.close()
            if isinstance(path, str) and path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
