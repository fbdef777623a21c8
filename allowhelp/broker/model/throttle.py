"""Login throttling: too many failures for one user name or from one address → 429.

Failures are counted in a sliding window per key (``user:NAME``, ``addr:IP``).
A locked key is refused before any password work, so a guessing run costs the
broker almost nothing, and an unknown user name is throttled exactly like a
known one (no hint which names exist). State is in memory and bounded: a
restart forgets it, which only ever gives an attacker one more window.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottlePolicy:
    window: float = 15 * 60.0
    per_user: int = 10
    per_address: int = 30
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError("the login throttle window must be a positive number of seconds")
        if self.per_user < 1 or self.per_address < 1:
            raise ValueError("login throttle limits must allow at least one failure")
        if self.max_keys < 100:
            raise ValueError("the login throttle must track at least 100 keys")


@dataclass(frozen=True)
class Lock:
    """A refusal: which key is locked, for how long, and whether to audit it."""

    key: str
    retry_after: int
    first: bool  # the first refusal of this lock episode: write it to the audit log

    @property
    def scope(self) -> str:
        return self.key.split(":", 1)[0]


class LoginThrottle:
    def __init__(
        self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._announced: dict[str, float] = {}

    @staticmethod
    def keys(username: str, remote: str) -> tuple[str, str]:
        return f"user:{username.lower()}", f"addr:{remote}"

    def attempt(self, username: str, remote: str) -> Lock | None:
        """The lock that refuses this attempt, or None: then it counts as a failure
        right away, before the password is checked, so that many attempts in
        parallel cannot all slip in under the limit. A success gives it back."""
        user_key, addr_key = self.keys(username, remote)
        return self._attempt(
            ((user_key, self.policy.per_user), (addr_key, self.policy.per_address))
        )

    def locked_from(self, remote: str) -> Lock | None:
        """The lock on ``remote``'s address, counting nothing: for what names no user
        and counts only once judged a failure (an enrolment: ``failed_from``)."""
        return self._locked(((f"addr:{remote}", self.policy.per_address),), self._clock())

    def failed_from(self, remote: str) -> None:
        """An attempt from ``remote`` was judged a failure (its record may still fail)."""
        self._count((f"addr:{remote}",), self._clock())

    def unannounced(self, lock: Lock) -> None:
        """``lock``'s record could not be written: the next refusal under it tries again."""
        self._announced.pop(lock.key, None)

    def _attempt(self, limits: tuple[tuple[str, int], ...]) -> Lock | None:
        now = self._clock()
        lock = self._locked(limits, now)
        if lock is None:
            self._count(tuple(key for key, _ in limits), now)
        return lock

    def _locked(self, limits: tuple[tuple[str, int], ...], now: float) -> Lock | None:
        for key, limit in limits:
            stamps = self._recent(key, now)
            if len(stamps) >= limit:
                # Unlocks when enough failures have left the window.
                until = stamps[len(stamps) - limit] + self.policy.window
                first = self._announced.get(key, 0.0) < now
                self._announced[key] = until
                return Lock(key, max(1, int(until - now + 0.999)), first)
        return None

    def _count(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            stamps = self._recent(key, now)
            stamps.append(now)
            self._failures[key] = stamps
            self._failures.move_to_end(key)
        while len(self._failures) > self.policy.max_keys:
            old, _ = self._failures.popitem(last=False)
            self._announced.pop(old, None)

    def refund(self, username: str, remote: str) -> None:
        """The attempt was not a failure (e.g. right password, code still to come)."""
        for key in self.keys(username, remote):
            stamps = self._failures.get(key)
            if stamps:
                stamps.pop()

    def succeeded(self, username: str, remote: str) -> None:
        """A full login clears the user's count; the address gets its attempt back."""
        user_key, _ = self.keys(username, remote)
        self.refund(username, remote)
        self._failures.pop(user_key, None)
        self._announced.pop(user_key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.get(key, deque())
        while stamps and stamps[0] <= now - self.policy.window:
            stamps.popleft()
        return stamps
