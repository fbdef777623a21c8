"""The open-file limit: raised at start, and said, so the cap is seen before the fleet hits it."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)

# Descriptors kept for everything but agent tunnels: HTTPS clients, the
# databases, the audit log, recordings, syslog. The rest is one per agent
# (three for an agent on the HTTPS port: wsbridge.py).
FD_RESERVE = 200
NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's cap when the hard limit is "unlimited"


def raise_fd_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit and return the new soft
    limit (None when it cannot be read or is unlimited).

    Every agent holds a socket, and the usual soft limit (1,024) caps a broker
    at about 800 PCs although the hard limit allows far more; raising the soft
    limit needs no privilege. Failing to is not fatal, only logged: the broker
    still serves as many agents as the current limit allows.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        log.warning("cannot read the open-file limit: %s", exc)
        return None
    target = hard if hard != resource.RLIM_INFINITY else _kernel_fd_cap()
    if target is not None and soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return None if soft == resource.RLIM_INFINITY else soft


def _kernel_fd_cap() -> int | None:
    """With an unlimited hard limit the soft one may go up to ``fs.nr_open``."""
    try:
        return int(NR_OPEN.read_text().strip())
    except (OSError, ValueError):
        return None


def announce_fd_limit(limit: int | None) -> None:
    """Say once how many agents this process can hold, so an operator sees the
    cap before the fleet hits it (``LimitNOFILE=`` under systemd)."""
    if limit is None:
        log.info("open-file limit: unlimited")
        return
    room = max(limit - FD_RESERVE, 0)
    log.info(
        "open-file limit %d: room for about %d agent tunnels on the SSH port, or %d on "
        "the HTTPS port (raise LimitNOFILE= for more)",
        limit,
        room,
        room // 3,  # its TCP socket and a socketpair (wsbridge.py)
    )
