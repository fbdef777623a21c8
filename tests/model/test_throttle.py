"""The throttle's logic without a broker (its HTTP side: tests/auth/test_login.py and
tests/tunnel/test_enrolment.py): the login's attempt counts at once; what names no
user (an enrolment) is looked at first and counted only once judged a failure."""

from __future__ import annotations

from allowhelp.broker.model.throttle import LoginThrottle, ThrottlePolicy

POLICY = ThrottlePolicy(window=60.0, per_user=3, per_address=4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_look_at_an_address_counts_nothing() -> None:
    throttle = LoginThrottle(POLICY, Clock())
    for _ in range(50):  # an enrolment under way, a key enrolled already, a success
        assert throttle.locked_from("10.0.0.1") is None


def test_failures_from_an_address_lock_it_and_only_it_until_they_leave_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(POLICY, clock)
    for _ in range(4):
        assert throttle.locked_from("10.0.0.1") is None
        throttle.failed_from("10.0.0.1")
    lock = throttle.locked_from("10.0.0.1")
    assert lock is not None and lock.scope == "addr" and lock.first
    assert lock.retry_after == 60
    again = throttle.locked_from("10.0.0.1")
    assert again is not None and not again.first  # one record per lock
    assert throttle.locked_from("10.0.0.2") is None  # another address is not locked
    clock.now += 60.5
    assert throttle.locked_from("10.0.0.1") is None


def test_a_lock_whose_record_failed_is_announced_again() -> None:
    throttle = LoginThrottle(POLICY, Clock())
    for _ in range(4):
        throttle.failed_from("10.0.0.1")
    lock = throttle.locked_from("10.0.0.1")
    assert lock is not None and lock.first
    throttle.unannounced(lock)
    retried = throttle.locked_from("10.0.0.1")
    assert retried is not None and retried.first


def test_a_login_attempt_counts_at_once_for_the_name_and_the_address() -> None:
    throttle = LoginThrottle(POLICY, Clock())
    for _ in range(3):
        assert throttle.attempt("ann", "10.0.0.1") is None
    lock = throttle.attempt("ann", "10.0.0.9")
    assert lock is not None and lock.scope == "user"
    assert throttle.attempt("bob", "10.0.0.1") is None  # the address has 3 of its 4
    lock = throttle.attempt("carl", "10.0.0.1")
    assert lock is not None and lock.scope == "addr"
