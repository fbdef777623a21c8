"""The doorbell's stream to the broker (``doorbellloop.py``'s ``Doorbell`` is one):
ringing in from a node (``doorbellnodes.py``), again with a fresh Hello
(``doorbellfresh.py``), reading the broker's lines, the refusals and the backoff.
Standard library only, like the rest of the doorbell."""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from allowhelp.agent import doorbellhttp as http
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbellbudget import ReadBudget
from allowhelp.agent.doorbellfresh import FreshHello
from allowhelp.agent.doorbellhttp import StreamError, backoff, said
from allowhelp.agent.doorbellkey import DOORBELL_FILE, SavedKey, hello_body
from allowhelp.agent.doorbellnodes import NodeWalk

log = logging.getLogger("allowhelp.agent.doorbellloop")

READ_IDLE = 60.0  # nothing read for this long (beats come every 20 s): dial again
STABLE_AFTER = 30.0  # a stream that stood this long starts the backoff over
# A move back to a node ahead, while a stream stands elsewhere: the loop waits on it
# (a ring on the standing stream, a local client), so a node that drops packets may
# hold it this long per step, not CONNECT_TIMEOUT's 15 s.
PROBE_TIMEOUT = 3.0
FORBIDDEN_WAIT = (600.0, 900.0)  # 403: the agent was removed; ask again rarely


class Interrupted(BaseException):
    """A stop signal arrived while the doorbell was dialing (no ``except OSError`` eats it)."""


@dataclass
class Stream:
    sock: ssl.SSLSocket
    chunks: http.ChunkDecoder | None
    lines: http.LineSplitter
    opened: float
    last_read: float
    budget: ReadBudget = field(default_factory=ReadBudget)  # a flood is dropped


class Ringing:
    """The stream side of ``Doorbell`` (which sets these and starts the full agent)."""

    folder: Path
    config: AgentConfig
    child: subprocess.Popen[bytes] | None
    stream: Stream | None
    attempts: int
    next_dial: float
    rang: str
    not_before: float
    fresh: FreshHello
    nodes: NodeWalk
    _selector: selectors.BaseSelector
    _dialing: bool

    @property
    def agent(self) -> str:
        return self.config.agent_id

    def _start_child(self, why: str) -> None:
        raise NotImplementedError

    def _want_child(self, why: str) -> None:
        """The full agent is needed: started now, or kept in ``rang`` until it may be
        (``_ring_missed``): once the one running has ended (the broker rings only a PC
        without a tunnel: that one was ending), or a failed one's backoff is over (a
        broker that rings on and on does not start a failing full agent back to back)."""
        if self.child is None and time.monotonic() >= self.not_before:
            self._start_child(why)
            return
        if not self.rang and self.child is None:
            wait = self.not_before - time.monotonic()
            log.info("agent=%s the full agent failed: it starts again in %.1f s", self.agent, wait)
        self.rang = why

    # the stream

    def _dial(
        self, key: SavedKey, nodes: list[str] | None = None, timeout: float = http.CONNECT_TIMEOUT
    ) -> bool:
        """Ring in from the first node that answers (``doorbellnodes.py``: the one
        that worked last, the enrolled broker, the listed others); True when a stream
        stands. A node that cannot be reached or answers 5xx: the next one; another
        refusal is the broker's word (``_refused``). ``nodes`` given (a fresh Hello, a
        move back): a failure leaves the standing stream alone."""
        hello = self.fresh.wanted()
        failures = []
        for node in self.nodes.order() if nodes is None else nodes:
            self._dialing = True  # a stop signal cuts each node's try short
            tried = self._ring_in(node, key, hello, timeout)
            if isinstance(tried, str):
                failures.append(f"{node}: {tried}")
                continue
            sock, head, extra, deadline = tried
            self._dialing = False  # answered: what follows is quick, and may start a child
            if head.status == 200:
                self._stood(
                    node, sock, chunked=head.chunked, extra=extra, hello=hello, failures=failures
                )
                return True
            code = http.error_code(http.read_error_body(sock, head, extra, deadline))
            sock.close()
            if head.status >= 500:
                failures.append(
                    f"{node} answered HTTP {head.status}" + (f" ({code})" if code else "")
                )
                continue
            self._refused(head.status, code)  # 401: the key goes, as on any dial
            return False
        if nodes is None:
            self._retry(f"cannot ring the broker's doorbell ({'; '.join(failures)})")
        return False

    def _ring_in(
        self, node: str, key: SavedKey, hello: dict[str, object], timeout: float
    ) -> tuple[ssl.SSLSocket, http.Head, bytes, float] | str:
        """The POST to ``node`` and its answer's head, or why not: all of it (and an
        error's body, by the deadline returned) within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            sock = http.open_tls(node, self.config.ca_pem, self.config.proxy, timeout)
        except (OSError, StreamError) as exc:
            return said(exc)
        try:
            http.time_left(sock, deadline)
            sock.sendall(
                http.doorbell_request(
                    urlsplit(node).netloc, key.agent_id, key.token, hello_body(self.folder, hello)
                )
            )
            head, extra = http.read_head(sock, deadline)
        except (OSError, StreamError) as exc:
            sock.close()
            return said(exc)
        except Interrupted:
            sock.close()
            raise
        return sock, head, extra, deadline

    def _stood(
        self,
        node: str,
        sock: ssl.SSLSocket,
        *,
        chunked: bool,
        extra: bytes,
        hello: dict[str, object],
        failures: list[str],
    ) -> None:
        """A stream stands on ``node``: it replaces one that stood (on any node)."""
        old, self.stream = self.stream, None
        if old is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(old.sock)
            old.sock.close()
        now = time.monotonic()
        self.stream = Stream(
            sock, http.ChunkDecoder() if chunked else None, http.LineSplitter(), now, now
        )
        self.fresh.dialing(hello)
        self.nodes.stood(node, now)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, "stream")
        where = "" if node == self.nodes.enrolled else f" through {node}"
        why = f" ({'; '.join(failures)})" if failures else ""
        log.info("agent=%s doorbell connected to the broker%s%s", self.agent, where, why)
        self._feed(extra)
        if self.stream is not None and sock.pending():
            self._read()

    def _refresh(self, key: SavedKey) -> None:
        """While a stream stands and no full agent runs: ring in again with a fresh
        Hello (``doorbellfresh.py``), or back from a node ahead (``doorbellnodes.py``)."""
        now = time.monotonic()
        if self.stream is None or self.child is not None:
            return
        ahead = self.nodes.return_due(now)
        if ahead and self._dial(key, ahead, PROBE_TIMEOUT):
            return
        if self.fresh.redial() is not None:
            log.info("agent=%s who is signed in changed: the doorbell rings in again", self.agent)
            if not self._dial(key, [self.nodes.preferred]):
                self.fresh.retry()  # the old stream stands; the fresh Hello again later

    def _refused(self, status: int, code: str) -> None:
        if status == 401:
            log.warning(
                "agent=%s the broker refused the doorbell key (%s): the full agent gets a new one",
                self.agent,
                code,
            )
            with contextlib.suppress(OSError):
                (self.folder / DOORBELL_FILE).unlink()
            self._retry("")
        elif status == 403:
            wait = random.uniform(*FORBIDDEN_WAIT)
            log.warning(
                "agent=%s the broker refuses this agent (%s: removed?): asking again in %.0f s",
                self.agent,
                code,
                wait,
            )
            self.next_dial = time.monotonic() + wait
        else:
            self._retry(
                f"the broker's doorbell answered HTTP {status}" + (f" ({code})" if code else "")
            )

    def _retry(self, why: str) -> None:
        delay = backoff(self.attempts)
        self.attempts += 1
        self.next_dial = time.monotonic() + delay
        if why:
            log.warning("agent=%s %s; again in %.1f s", self.agent, why, delay)

    def _read(self) -> None:
        stream = self.stream
        if stream is None:
            return
        try:
            while self.stream is stream:
                data = stream.sock.recv(65536)
                if not data:
                    self._drop("the broker closed the doorbell")
                    return
                stream.last_read = time.monotonic()
                over = stream.budget.spend(len(data), stream.last_read)
                if over is not None:  # checked before decoding: a flood costs no more
                    self._drop(f"the broker's stream is too busy ({over})", stable=False)
                    return
                self._feed(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, StreamError) as exc:
            self._drop(said(exc))

    def _feed(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            return
        try:
            body = stream.chunks.feed(data) if stream.chunks is not None else data
            events = [http.parse_event(line) for line in stream.lines.feed(body)]
        except StreamError as exc:
            self._drop(f"the broker's stream is malformed ({exc})")
            return
        for event in events:
            if event["type"] == "ring":
                said_reason = str(event.get("reason", ""))[:40]  # the broker's: logged plain
                reason = "".join(c for c in said_reason if c.isalnum() or c in "._-") or "-"
                log.info("agent=%s the broker rings (%s)", self.agent, reason)
                self._want_child(f"the broker rang: {reason}")
        if stream.chunks is not None and stream.chunks.done:
            self._drop("the broker ended the doorbell")

    def _drop(self, why: str, *, stable: bool = True) -> None:
        """Close the stream; dial again after the backoff (``why`` logged), which a
        stream that stood long enough starts over, unless not ``stable`` (a flood)."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(stream.sock)
        stream.sock.close()
        if stable and time.monotonic() - stream.opened > STABLE_AFTER:
            self.attempts = 0
        if why:
            self._retry(why)
