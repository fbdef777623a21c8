"""What every connection to PostgreSQL gets, the store's (``store/postgres_db.py``) and
the audit chain's (``audit/pg_chain.py``) alike: TCP keepalives and ``tcp_user_timeout``
(``link_options``), and a deadline on this side for each call (``DEADLINES``).

A connection whose far end stops answering without closing (the database's host
gone, a partition, a middlebox holding the connection: half-open) blocks the call
waiting on it until the kernel gives up, minutes later, and every call queued behind
it on the same lane. PostgreSQL's ``statement_timeout`` cannot help (the server never
sees the statement), and TCP keepalives and ``tcp_user_timeout`` only help when the
far end's kernel stops answering too. So one thread watches the calls under way: at
a call's deadline it shuts its connection's socket down, the blocked call fails at
once (psycopg's ``OperationalError``), and the connection is opened again on the next
call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Seconds this side waits for a whole call (a transaction: its statements and commit)
# before cutting its connection; and for the ``SELECT 1`` that checks an idle one.
CALL_DEADLINE = 12.0
PROBE_DEADLINE = 3.0
# TCP keepalives (libpq): an idle connection to a host that is gone is noticed after
# KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT s, and data unacknowledged for
# CALL_DEADLINE s breaks the connection (tcp_user_timeout).
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def link_options() -> dict[str, Any]:
    """libpq's keyword arguments for keepalives and ``tcp_user_timeout``."""
    return {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": int(CALL_DEADLINE * 1000),
    }


def _shut(fd: int) -> None:
    """Shut the socket behind ``fd`` down both ways (not closed: its owner does that)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with contextlib.suppress(OSError), sock:
        sock.shutdown(socket.SHUT_RDWR)


class Deadlines:
    """The calls under way, each with its socket and its deadline; one watcher thread."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token: (deadline, fd)
        self._fired: set[int] = set()
        self._tokens = 0
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> int:
        """Watch the socket ``fd`` for ``seconds``; a token for :meth:`disarm`."""
        with self._wake:
            self._tokens += 1
            self._armed[self._tokens] = (time.monotonic() + seconds, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="pg-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()
            return self._tokens

    def disarm(self, token: int) -> bool:
        """The call is over (before its socket is closed); True if its deadline struck."""
        with self._wake:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _watch(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        log.warning("a database call ran past its deadline: its connection is cut")
                        _shut(fd)
                soonest = min((deadline for deadline, _ in self._armed.values()), default=None)
                self._wake.wait(None if soonest is None else max(soonest - now, 0.0))


DEADLINES = Deadlines()


@dataclass
class Watch:
    """One call under a deadline: ``struck`` once it is over, if the deadline cut it."""

    struck: bool = False


@contextlib.contextmanager
def watched(fd: int, seconds: float) -> Iterator[Watch]:
    """Run the body with the socket ``fd`` cut at ``seconds``; say whether it was."""
    watch = Watch()
    token = DEADLINES.arm(fd, seconds)
    try:
        yield watch
    finally:
        watch.struck = DEADLINES.disarm(token)
