"""The session lifecycle as a plain state machine (no sockets)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from allowhelp.broker.errors import IllegalTransition
from allowhelp.broker.model.session import Session, State, Traffic

R, W, A, E, D, X = (
    State.REQUESTED,
    State.AWAITING_CONSENT,
    State.ACTIVE,
    State.ENDED,
    State.DENIED,
    State.EXPIRED,
)

# Written out by hand from the design's lifecycle, not read from the code's
# table: a move added there (say requested → active, skipping consent) must
# fail this test.
LEGAL = {
    (R, W),  # the prompt is shown
    (R, E),  # the request failed before the prompt (agent offline, audit down)
    (W, A),  # the user clicked Allow
    (W, D),  # the user clicked Deny
    (W, X),  # nobody answered in time
    (W, E),  # cancelled while waiting, or the agent went
    (A, E),  # the session ends
}


def fresh(kind: str = "shell") -> Session:
    return Session.new(
        agent_id="a-test",
        hostname="pc1",
        technician="alice",
        technician_name="Alice A.",
        kind=kind,  # type: ignore[arg-type]
        reason="printer",
    )


def at(state: State) -> Session:
    return dataclasses.replace(fresh(), state=state)


def test_happy_path_events_in_order() -> None:
    session = fresh()
    events = []
    for state, reason in (
        (State.AWAITING_CONSENT, None),
        (State.ACTIVE, None),
        (State.ENDED, "technician"),
    ):
        session, event = session.transition(state, actor="x", reason=reason)  # type: ignore[arg-type]
        events.append(event.type)
    assert events == ["consent.asked", "consent.granted", "session.ended"]
    assert session.started is not None and session.ended is not None
    assert session.end_reason == "technician"


def test_transition_does_not_change_the_original() -> None:
    """The caller adopts the new value only after the audit write succeeded."""
    session = fresh()
    after, _ = session.transition(State.AWAITING_CONSENT, actor="x")
    assert session.state is State.REQUESTED
    assert after.state is State.AWAITING_CONSENT


def test_a_session_cannot_be_changed_but_by_a_transition() -> None:
    session = fresh()
    for field, value in (("state", State.ACTIVE), ("view_only", True), ("bytes_to_agent", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(session, field, value)


@pytest.mark.parametrize("start,target", list(itertools.product(State, State)))
def test_only_the_moves_of_the_lifecycle_are_allowed(start: State, target: State) -> None:
    session = at(start)
    reason = "technician" if target is State.ENDED else None
    if (start, target) in LEGAL:
        after, event = session.transition(target, actor="x", reason=reason)  # type: ignore[arg-type]
        assert after.state is target and event.target == session.id
    else:
        with pytest.raises(IllegalTransition):
            session.transition(target, actor="x", reason=reason)  # type: ignore[arg-type]


def test_no_path_reaches_active_without_the_consent_prompt() -> None:
    """Whatever the order of moves, active is only ever entered from awaiting_consent."""
    into_active = {start for start, target in LEGAL if target is A}
    assert into_active == {W}
    for start in State:
        if start is not W:
            with pytest.raises(IllegalTransition):
                at(start).transition(A, actor="x")


def test_ending_needs_a_reason() -> None:
    session = fresh()
    with pytest.raises(IllegalTransition):
        session.transition(State.ENDED, actor="x")


def test_view_only_enters_with_the_grant_and_its_record() -> None:
    waiting, _ = fresh("screen").transition(W, actor="x")
    active, event = waiting.transition(A, actor="u", view_only=True, details={"scope": "v"})
    assert active.view_only and not waiting.view_only
    assert event.type == "consent.granted" and event.details["scope"] == "v"
    with pytest.raises(IllegalTransition):
        fresh("screen").transition(W, actor="x", view_only=True)


def test_end_event_carries_duration_bytes_and_the_recording() -> None:
    session = fresh()
    session, _ = session.transition(State.AWAITING_CONSENT, actor="x", now=100.0)
    session, _ = session.transition(State.ACTIVE, actor="x", now=110.0)
    traffic = Traffic(to_agent=12, from_agent=3400, recording="s.cast", recording_sha256="ab" * 32)
    after, event = session.transition(
        State.ENDED, actor="x", reason="user", now=140.5, traffic=traffic
    )
    assert event.details["duration_seconds"] == 30.5
    assert event.details["bytes_to_agent"] == 12
    assert event.details["bytes_from_agent"] == 3400
    assert event.details["end_reason"] == "user"
    assert event.details["recording_sha256"] == "ab" * 32
    assert (after.bytes_from_agent, after.recording) == (3400, "s.cast")
    assert session.bytes_from_agent == 0


@pytest.mark.parametrize(
    "reason,actor",
    [
        ("technician", "technician:alice"),
        ("user", "user@a-test"),
        ("shell_exited", "system"),
        ("agent_lost", "system"),
        ("broker_restart", "system"),
        ("error", "system"),
    ],
)
def test_one_actor_rule_for_every_end_reason(reason: str, actor: str) -> None:
    for kind in ("shell", "screen"):
        assert fresh(kind).actor_for(reason) == actor  # type: ignore[arg-type]


def test_ids_and_phrases_differ() -> None:
    sessions = [fresh() for _ in range(50)]
    assert len({s.id for s in sessions}) == 50
    assert all(len(s.phrase.split()) == 3 for s in sessions)
    assert len({s.phrase for s in sessions}) > 40
