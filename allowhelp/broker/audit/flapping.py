"""What of an agent's connectivity reaches the chain: the rules, without I/O.

The chain is about people and sessions. An agent coming online after being
away, or going offline, is worth a record; the 300th reconnect of a PC behind
a bad office link is not. So (docs/audit.md, "What is kept where"):

* :class:`FlapGate`: each agent gets ``burst`` connects (and their
  disconnects) per ``window`` chained one by one. The next connect within the
  window makes it *flapping*: from then on its connects and disconnects are
  only counted, and one ``agent.flapping`` summary per window is chained
  (``started`` at once, then ``ongoing``), and a last one (``settled``) once
  it has been quiet for a whole window. Every event still lands in the
  bounded connectivity history of the broker database.
* :class:`Coalescer`: refusals (failed handshakes, unknown keys) per key (an
  address): the first in a window is chained at once, the rest are summed up
  in one record when the window closes. At most ``max_keys`` keys per window
  get their own records; the rest share one overflow key, so rotating
  addresses cannot flood the chain either.

Both are driven by the caller's clock (``now``), so tests need no sleeps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

FlapState = Literal["started", "ongoing", "settled"]
OVERFLOW_KEY = "*"
MAX_REASONS = 8
MAX_OVERFLOW_KEYS = 10_000


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class FlapSummary:
    agent_id: str
    state: FlapState
    connects: int
    disconnects: int
    since: float  # wall clock of the first event summed up
    until: float
    remote: str
    window: float

    def details(self, online: bool) -> dict[str, object]:
        return {
            "state": self.state,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "since": iso(self.since),
            "until": iso(self.until),
            "remote": self.remote,
            "online": online,
            "window_seconds": self.window,
        }


@dataclass
class _Agent:
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (mono, wall)
    flapping: bool = False
    connects: int = 0
    disconnects: int = 0
    since: float = 0.0
    until: float = 0.0
    remote: str = ""
    last_summary: float = 0.0
    last_event: float = 0.0


class FlapGate:
    def __init__(self, window: float, burst: int) -> None:
        self.window = window
        self.burst = burst
        self._agents: dict[str, _Agent] = {}

    def flapping(self, agent_id: str) -> bool:
        state = self._agents.get(agent_id)
        return state is not None and state.flapping

    def connected(
        self, agent_id: str, remote: str, now: float, wall: float
    ) -> tuple[bool, FlapSummary | None]:
        """(chain this connect as ``agent.connected``, summary to chain instead)."""
        state = self._agents.setdefault(agent_id, _Agent())
        state.last_event = now
        if not state.flapping:
            while state.recent and state.recent[0][0] <= now - self.window:
                state.recent.popleft()
            if len(state.recent) < self.burst:
                state.recent.append((now, wall))
                return True, None
            state.flapping, state.last_summary = True, now
            first = state.recent[0][1]
            state.recent.clear()
            summary = FlapSummary(
                agent_id, "started", self.burst + 1, self.burst, first, wall, remote, self.window
            )
            state.connects = state.disconnects = 0
            state.remote = remote
            return False, summary
        self._count(state, wall, remote, connect=True)
        return False, self._ongoing(agent_id, state, now)

    def disconnected(
        self, agent_id: str, now: float, wall: float
    ) -> tuple[bool, FlapSummary | None]:
        """(chain this disconnect as ``agent.disconnected``, summary to chain instead)."""
        state = self._agents.get(agent_id)
        if state is None or not state.flapping:
            return True, None
        state.last_event = now
        self._count(state, wall, state.remote, connect=False)
        return False, self._ongoing(agent_id, state, now)

    def due(self, now: float) -> list[FlapSummary]:
        """Summaries whose time has come without an event: ``settled`` ones (a whole
        window quiet) and ``ongoing`` ones (a window since the last). Also forgets
        agents with nothing left to remember, so the table stays small."""
        out: list[FlapSummary] = []
        for agent_id, state in list(self._agents.items()):
            if not state.flapping:
                if not state.recent or state.recent[-1][0] <= now - self.window:
                    del self._agents[agent_id]
                continue
            if now - state.last_event >= self.window:
                out.append(self._summary(agent_id, state, "settled"))
                del self._agents[agent_id]
            elif (summary := self._ongoing(agent_id, state, now)) is not None:
                out.append(summary)
        return out

    def flush(self) -> list[FlapSummary]:
        """At stop: every flapping agent's pending counts, as ``settled``."""
        out = [
            self._summary(agent_id, state, "settled")
            for agent_id, state in self._agents.items()
            if state.flapping
        ]
        self._agents.clear()
        return out

    @staticmethod
    def _count(state: _Agent, wall: float, remote: str, *, connect: bool) -> None:
        if state.connects == state.disconnects == 0:
            state.since = wall
        state.until = wall
        state.remote = remote
        if connect:
            state.connects += 1
        else:
            state.disconnects += 1

    def _ongoing(self, agent_id: str, state: _Agent, now: float) -> FlapSummary | None:
        if now - state.last_summary < self.window or state.connects + state.disconnects == 0:
            return None
        state.last_summary = now
        return self._summary(agent_id, state, "ongoing")

    def _summary(self, agent_id: str, state: _Agent, kind: FlapState) -> FlapSummary:
        summary = FlapSummary(
            agent_id,
            kind,
            state.connects,
            state.disconnects,
            state.since or state.until,
            state.until,
            state.remote,
            self.window,
        )
        state.connects = state.disconnects = 0
        return summary


@dataclass(frozen=True)
class Tally:
    """The refusals of one key summed up over a window (the first was chained)."""

    key: str
    count: int
    since: float
    until: float
    reasons: dict[str, int]
    keys: int  # distinct keys behind it: 1, or more for the overflow key

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {
            "count": self.count,
            "since": iso(self.since),
            "until": iso(self.until),
            "reasons": dict(self.reasons),
            "coalesced": True,
        }
        if self.key == OVERFLOW_KEY:
            out["addresses"] = self.keys
        return out


@dataclass
class _Window:
    opened: float
    first_wall: float
    count: int = 0  # after the first, which was chained on its own
    since: float = 0.0
    until: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)


class Coalescer:
    def __init__(self, window: float, max_keys: int = 100) -> None:
        self.window = window
        self.max_keys = max_keys
        self._open: dict[str, _Window] = {}

    def hit(self, key: str, reason: str, now: float, wall: float) -> str | None:
        """The key to chain a record for now (the first of its window), or None
        when this refusal is only counted for the window's summary."""
        if key not in self._open and len(self._open) >= self.max_keys:
            bucket = self._open.get(OVERFLOW_KEY)
            if bucket is None:
                self._open[OVERFLOW_KEY] = _Window(now, wall, keys={key})
                return OVERFLOW_KEY
            if len(bucket.keys) < MAX_OVERFLOW_KEYS:  # counted up to here only
                bucket.keys.add(key)
            self._count(bucket, reason, wall)
            return None
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(now, wall, keys={key})
            return key
        self._count(window, reason, wall)
        return None

    def due(self, now: float) -> list[Tally]:
        """Windows that have closed; those with refusals after the first give a tally."""
        closed = [key for key, window in self._open.items() if now - window.opened >= self.window]
        return [t for key in closed if (t := self._close(key)) is not None]

    def flush(self) -> list[Tally]:
        return [t for key in list(self._open) if (t := self._close(key)) is not None]

    @staticmethod
    def _count(window: _Window, reason: str, wall: float) -> None:
        if window.count == 0:
            window.since = wall
        window.count += 1
        window.until = wall
        if reason in window.reasons or len(window.reasons) < MAX_REASONS:
            window.reasons[reason] = window.reasons.get(reason, 0) + 1
        else:
            window.reasons["other"] = window.reasons.get("other", 0) + 1

    def _close(self, key: str) -> Tally | None:
        window = self._open.pop(key)
        if window.count == 0:
            return None
        return Tally(
            key, window.count, window.since, window.until, window.reasons, len(window.keys)
        )
