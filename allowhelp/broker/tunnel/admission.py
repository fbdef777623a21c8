"""Admission control for tunnel handshakes, as OpenSSH's MaxStartups.

At most ``MAX_STARTUPS`` handshakes are in progress at once. The next
``MAX_WAITING`` connections are accepted and wait, in the order they came, for
a handshake slot (a socket and a parked task each, no CPU); beyond that the
broker stops calling ``accept()`` (``room`` is cleared) and the next agents
wait in the kernel's backlog (``TUNNEL_BACKLOG``), so nobody fails and
escalates its backoff (measured: a 19,800-agent fleet all back after a restart
this way; closing the excess at accept let 7 % back in the same time). The
kernel's backlog alone (1,024 then) overflowed when 10,000 agents came back at
once after a ``kill -9``: their SYNs were dropped, and thousands hit their 15 s
connect timeout or a reset and came back only after another 30 s of backoff
(docs/benchmarks.md §10). A connection that waited longer than ``MAX_WAIT`` is
closed instead of handshaken: its agent is about to give up on it. One address
may hold at most ``MAX_STARTUPS_PER_ADDRESS`` connections waiting or in a
handshake; its excess is closed at accept. Without any of this, a whole fleet
reconnecting after a broker restart shares the CPU so thinly that no handshake
finishes before its login timeout, every agent retries, and none ever gets
back in.
"""

from __future__ import annotations

import asyncio

# Handshakes in progress at once. Each costs the broker 3-7 ms of CPU, so 200
# at once finish in about a second, far inside the login timeout; measured
# with 16 per address, a fleet behind one address came back 2x slower than
# without a limit (bench/, docs/benchmarks.md).
MAX_STARTUPS = 200
MAX_STARTUPS_PER_ADDRESS = 100  # one address (a branch office's NAT) cannot take them all
# Accepted connections waiting for a handshake slot: at the measured 250-300
# handshakes/s about 15 s of work, one fd each (a fleet's agents hold one each
# once back anyway).
MAX_WAITING = 4096
MAX_WAIT = 40.0  # seconds; agents give up on a login after 60 (agent/tunnel.py)
# listen(2)'s backlog for the SSH port; Linux clamps it to net.core.somaxconn
# (4096 by default since 5.4): raise that sysctl for more.
TUNNEL_BACKLOG = 65535


class Admission:
    """Who may wait for a handshake, and the slots they wait for. A connection is
    admitted (``admit``) until its handshake ends (``done``), in success or failure."""

    def __init__(self) -> None:
        self.starting: dict[str, int] = {}  # per address: waiting or in a handshake
        self.room = asyncio.Event()  # set while fewer than MAX_STARTUPS + MAX_WAITING
        self.room.set()
        self._slots = asyncio.Semaphore(MAX_STARTUPS)  # FIFO: the first to come goes first
        self._waiting: set[asyncio.Task[None]] = set()

    def admit(self, address: str) -> bool:
        """Count a connection from ``address`` in; False: its address has too many."""
        here = self.starting.get(address, 0)
        if here >= MAX_STARTUPS_PER_ADDRESS:
            return False
        self.starting[address] = here + 1
        if sum(self.starting.values()) >= MAX_STARTUPS + MAX_WAITING:
            self.room.clear()
        return True

    def done(self, address: str) -> None:
        left = self.starting.pop(address, 1) - 1
        if left:
            self.starting[address] = left
        if sum(self.starting.values()) < MAX_STARTUPS + MAX_WAITING:
            self.room.set()

    async def slot(self) -> None:
        """Wait for a handshake slot, first come first served, ``MAX_WAIT`` at most
        (``TimeoutError``: its agent is about to give up on it anyway)."""
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            await asyncio.wait_for(self._slots.acquire(), MAX_WAIT)
        except TimeoutError:
            raise TimeoutError(f"waited {MAX_WAIT:.0f} s for a handshake slot") from None
        finally:
            if task is not None:
                self._waiting.discard(task)

    def release(self) -> None:
        """A handshake that had a slot ended."""
        self._slots.release()

    def cancel_waiting(self) -> None:
        """The broker stops: connections accepted but not started are just closed."""
        for waiting in list(self._waiting):
            waiting.cancel()
