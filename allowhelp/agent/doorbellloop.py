"""The doorbell's loop (``doorbell.py`` starts it): one ``selectors`` loop over the
broker's stream, the agent's listening sockets and a signal pipe; the full agent
as its child. Standard library only, like the rest of the doorbell."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbellfresh import FreshHello
from allowhelp.agent.doorbellkey import read_key
from allowhelp.agent.doorbellnodes import NODE_ENV, NodeWalk
from allowhelp.agent.doorbellpark import HelperPark
from allowhelp.agent.doorbellstream import READ_IDLE, Interrupted, Ringing, Stream
from allowhelp.agent.localpath import ADOPT_FDS_ENV, LISTEN_FDS_ENV

log = logging.getLogger(__name__)

# upgrade.UPGRADED_FILE (upgrade.py loads asyncio; a test keeps the two equal)
UPGRADED_FILE = "upgraded"
KEYLESS_EVERY = 60.0  # at most one start of the full agent per minute for want of a key
CHILD_STOP_WAIT = 12.0  # the unit's TimeoutStopSec is 15 s
TICK = 1.0  # the upgrade mark and a key the full agent saved are looked for this often
PARKED = "machine"  # the listener whose session helpers wait here (doorbellpark.py)


class Doorbell(Ringing):
    def __init__(
        self,
        folder: Path,
        config: AgentConfig,
        command: list[str],
        listeners: dict[str, socket.socket],
        reconnect_cap: float = 30.0,
    ) -> None:
        self.folder = folder
        self.config = config
        self.command = command
        self.listeners = listeners
        self.child: subprocess.Popen[bytes] | None = None
        self.stream: Stream | None = None
        self.attempts = 0
        self.next_dial = 0.0
        self.keyless_start = -KEYLESS_EVERY  # when the full agent was last started keyless
        self.not_before = 0.0  # after a failed full agent: its next start
        self.failures = 0
        self.stopping = 0  # the signal that asks this process to stop
        self._selector = selectors.DefaultSelector()
        self._watching = False
        self._dialing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self.park = HelperPark(self._selector)
        self.fresh = FreshHello(folder, self.park, system=PARKED in listeners)
        self.nodes = NodeWalk(folder, config.broker_url, config.agent_id, reconnect_cap)
        # Why a full agent is wanted (a ring, a local client) when none could start: one
        # ran (the broker rings only a PC with no tunnel, so that one is starting or
        # ending; if it ends, another one starts) or a failed one's backoff had not
        # passed (``not_before``). ``_ring_missed`` starts it once it may.
        self.rang = ""

    # the loop

    def run(self) -> int:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop_signal)
        signal.signal(signal.SIGCHLD, lambda _n, _f: None)  # wakes select: reap at once
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        log.info("agent=%s doorbell running (idle: the full agent starts when needed)", self.agent)
        try:
            while not self.stopping:
                self._step()
            return self._stop()
        finally:
            signal.set_wakeup_fd(-1)
            self.close()

    def close(self) -> None:
        """The stream, parked helpers, the selector and the signal pipe (the listeners
        are the caller's)."""
        self._drop("")
        self.park.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _step(self) -> None:
        self._reap()
        self._ring_missed()
        now = time.monotonic()
        if self.child is None and self._upgraded():
            self._reexec()
        key = read_key(self.folder)
        keyless = key is None and self.child is None and now >= self.not_before
        if keyless and now - self.keyless_start >= KEYLESS_EVERY:
            self.keyless_start = now
            self._start_child("no doorbell key yet")
        if key is not None and self.stream is None and now >= self.next_dial:
            self._dialing = True  # a stop signal cuts the dial short (``_stop_signal``)
            try:
                self._dial(key)
            except Interrupted:
                self._drop("")
                return
            finally:
                self._dialing = False
        self._watch_listeners(self.child is None and time.monotonic() >= self.not_before)
        for selected, _mask in self._selector.select(self._timeout(keyed=key is not None)):
            self._ready(selected.data)
        self._check_quiet()
        self.park.expire()
        self.park.hung_up()
        if key is not None:
            self._dialing = True
            try:
                self._refresh(key)
            except Interrupted:
                return
            finally:
                self._dialing = False

    def _check_quiet(self) -> None:
        """A stream that said nothing for ``READ_IDLE`` (beats come every 20 s) is dead
        somewhere on the way: dial again."""
        stream = self.stream
        if stream is not None and time.monotonic() - stream.last_read > READ_IDLE:
            self._drop(f"nothing read for {READ_IDLE:.0f} s")

    def _timeout(self, *, keyed: bool) -> float:
        """How long to wait for a socket or a signal: the next dial, the stream's read
        deadline, the next start allowed; at most ``TICK`` (the key file, the mark)."""
        now = time.monotonic()
        waits = [TICK]
        if self.stream is not None:
            waits.append(self.stream.last_read + READ_IDLE - now)
        elif keyed:
            waits.append(self.next_dial - now)
        if self.child is None and self.not_before > now:
            waits.append(self.not_before - now)
        return max(0.0, min(waits))

    def _ready(self, what: object) -> None:
        if what == "wake":
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(512):
                    pass
        elif what == "stream":
            self._read()
        elif isinstance(what, socket.socket):
            if self.park.first_packet(what) and self.child is None:
                self._want_child(f"a local client on the {PARKED} socket")
        elif what == PARKED and self.child is None:
            self.park.accept(self.listeners[PARKED])
            if self.park.full:
                self._start_child("more local clients than can wait")
        elif isinstance(what, str) and self.child is None:
            self._start_child(f"a local client on the {what} socket")

    def _watch_listeners(self, watch: bool) -> None:
        if watch == self._watching:
            return
        for name, listener in self.listeners.items():
            if watch:
                self._selector.register(listener, selectors.EVENT_READ, name)
            else:
                self._selector.unregister(listener)
        self._watching = watch

    def _stop_signal(self, number: int, _frame: FrameType | None) -> None:
        self.stopping = number
        if self._dialing:  # blocking calls (connect, TLS, the answer): up to 15 s a node
            self._dialing = False
            raise Interrupted

    # the full agent

    def _start_child(self, why: str) -> None:
        fds = {name: listener.fileno() for name, listener in self.listeners.items()}
        env = {**os.environ, LISTEN_FDS_ENV: ",".join(f"{n}={fd}" for n, fd in fds.items())}
        conns = self.park.hand_over()  # parked helpers and unread clients: the child's now
        if conns:
            env[ADOPT_FDS_ENV] = ",".join(str(conn.fileno()) for conn in conns)
        if self.nodes.preferred not in ("", self.nodes.enrolled):  # failed over: its tunnel
            env[NODE_ENV] = self.nodes.preferred  # tries that node first (woken.rung_from)
        try:
            self.child = subprocess.Popen(
                self.command, env=env, pass_fds=(*fds.values(), *(c.fileno() for c in conns))
            )
        except OSError as exc:
            log.error("agent=%s cannot start the full agent: %s", self.agent, exc)
            self._child_failed()
            return
        finally:
            for conn in conns:
                conn.close()
        log.info("agent=%s starting the full agent (%s): pid %d", self.agent, why, self.child.pid)
        self.rang = ""
        self._watch_listeners(False)

    def _ring_missed(self) -> None:
        """The full agent was wanted while one was ending or a failed one's backoff
        ran (``_want_child``): once that one is gone and the backoff over, it starts."""
        if self.rang and self.child is None and time.monotonic() >= self.not_before:
            self._start_child(f"{self.rang}, once the last one ended or its backoff passed")

    def _reap(self) -> None:
        if self.child is None or self.child.poll() is None:
            return
        status, pid = self.child.returncode, self.child.pid
        self.child = None
        self.fresh.child_ended()
        if status == 0:
            log.info("agent=%s the full agent (pid %d) is idle and ended", self.agent, pid)
            self.failures, self.not_before = 0, 0.0
        else:
            log.warning("agent=%s the full agent (pid %d) failed (%s)", self.agent, pid, status)
            self._child_failed()

    def _child_failed(self) -> None:
        """A full agent that cannot start or dies is started again after 1, 2 ... 60 s."""
        self.not_before = time.monotonic() + min(60.0, 2.0**self.failures)
        self.failures += 1

    def _stop(self) -> int:
        child = self.child
        if child is not None and child.poll() is None:
            log.info("agent=%s stopping; the full agent (pid %d) too", self.agent, child.pid)
            child.send_signal(self.stopping)
            try:
                child.wait(CHILD_STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("agent=%s the full agent did not stop: killed", self.agent)
                child.kill()
                child.wait()
        log.info("agent=%s doorbell stopped", self.agent)
        return 0

    def _upgraded(self) -> bool:
        try:
            return (self.folder / UPGRADED_FILE).exists()
        except OSError:
            return False

    def _reexec(self) -> None:
        """The package was upgraded and nobody is being helped: become the new version
        (its start spends the mark). The sockets close with this program; the new one
        binds them again."""
        log.info("agent=%s the package was upgraded: the doorbell restarts", self.agent)
        self._drop("")
        signal.set_wakeup_fd(-1)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606
