"""The session lifecycle as a plain state machine (no sockets)."""

from __future__ import annotations

import itertools

import pytest

from allowhelp.broker.session import ALLOWED, FINAL, IllegalTransition, Session, State


def fresh() -> Session:
    return Session.new(
        agent_id="a-test",
        hostname="pc1",
        technician="alice",
        technician_name="Alice A.",
        kind="shell",
        reason="printer",
    )


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


@pytest.mark.parametrize("start,target", list(itertools.product(State, State)))
def test_every_illegal_move_is_refused(start: State, target: State) -> None:
    session = fresh()
    session.state = start
    reason = "technician" if target is State.ENDED else None
    if target in ALLOWED[start]:
        after, event = session.transition(target, actor="x", reason=reason)  # type: ignore[arg-type]
        assert after.state is target and event.target == session.id
    else:
        with pytest.raises(IllegalTransition):
            session.transition(target, actor="x", reason=reason)  # type: ignore[arg-type]


def test_final_states_are_final() -> None:
    for state in FINAL:
        assert not ALLOWED[state]


def test_ending_needs_a_reason() -> None:
    session = fresh()
    with pytest.raises(IllegalTransition):
        session.transition(State.ENDED, actor="x")


def test_end_event_carries_duration_and_bytes() -> None:
    session = fresh()
    session, _ = session.transition(State.AWAITING_CONSENT, actor="x", now=100.0)
    session, _ = session.transition(State.ACTIVE, actor="x", now=110.0)
    session.bytes_to_agent, session.bytes_from_agent = 12, 3400
    session.recording_sha256 = "ab" * 32
    _, event = session.transition(State.ENDED, actor="x", reason="user", now=140.5)
    assert event.details["duration_seconds"] == 30.5
    assert event.details["bytes_to_agent"] == 12
    assert event.details["bytes_from_agent"] == 3400
    assert event.details["end_reason"] == "user"
    assert event.details["recording_sha256"] == "ab" * 32


def test_ids_and_phrases_differ() -> None:
    sessions = [fresh() for _ in range(50)]
    assert len({s.id for s in sessions}) == 50
    assert all(len(s.phrase.split()) == 3 for s in sessions)
    assert len({s.phrase for s in sessions}) > 40
