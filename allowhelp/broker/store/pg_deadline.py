"""A deadline on this side for each call to PostgreSQL (``postgres_db.py``).

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

log = logging.getLogger(__name__)


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
