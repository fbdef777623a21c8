"""The agent's consent gate as plain logic (no sockets, a fake clock)."""

from __future__ import annotations

import pytest

from allowhelp.agent.consent import ConsentGate, ConsentRefused
from allowhelp.protocol.control import ConsentRequest
from allowhelp.protocol.kinds import Kind


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(session_id: str = "Session0001", kind: Kind = "shell") -> ConsentRequest:
    return ConsentRequest(
        session_id=session_id,
        organisation="Org",
        technician="Ann",
        kind=kind,
        reason="why",
        phrase="a b c",
        timeout=60,
    )


def test_nothing_is_granted_by_default() -> None:
    gate = ConsentGate()
    with pytest.raises(ConsentRefused):
        gate.claim("Session0001", "shell", lambda: None)
    gate.ask(request())
    with pytest.raises(ConsentRefused):  # asked is not granted
        gate.claim("Session0001", "shell", lambda: None)


def test_allow_grants_one_channel_of_that_kind_only() -> None:
    gate = ConsentGate()
    gate.ask(request())
    decision = gate.decide("Session0001", allow=True, view_only=False, via="cli")
    assert decision.granted and "Ann from Org" in decision.prompt
    with pytest.raises(ConsentRefused):
        gate.claim("Session0001", "screen", lambda: None)
    gate.claim("Session0001", "shell", lambda: None)
    with pytest.raises(ConsentRefused):
        gate.claim("Session0001", "shell", lambda: None)
    with pytest.raises(ConsentRefused):
        gate.claim("OtherSession", "shell", lambda: None)


def test_deny_grants_nothing_and_cannot_be_reversed() -> None:
    gate = ConsentGate()
    gate.ask(request())
    assert not gate.decide("Session0001", allow=False, view_only=False, via="dialog").granted
    with pytest.raises(ConsentRefused):
        gate.decide("Session0001", allow=True, view_only=False, via="cli")
    with pytest.raises(ConsentRefused):
        gate.claim("Session0001", "shell", lambda: None)


def test_expiry() -> None:
    clock = Clock()
    gate = ConsentGate(clock)
    gate.ask(request())
    clock.now += 61
    assert gate.pending() == []
    with pytest.raises(ConsentRefused):
        gate.decide("Session0001", allow=True, view_only=False, via="cli")


def test_view_only_applies_to_screens_only() -> None:
    gate = ConsentGate()
    gate.ask(request("ScreenSess01", "screen"))
    assert gate.decide("ScreenSess01", allow=True, view_only=True, via="cli").view_only
    gate.ask(request("ShellSess001", "shell"))
    assert not gate.decide("ShellSess001", allow=True, view_only=True, via="cli").view_only


def test_revoke_closes_channels_at_once() -> None:
    gate = ConsentGate()
    closed: list[str] = []
    gate.ask(request())
    gate.decide("Session0001", allow=True, view_only=False, via="cli")
    gate.claim("Session0001", "shell", lambda: closed.append("shell"))
    assert gate.revoke("Session0001")
    assert closed == ["shell"]
    assert not gate.revoke("Session0001")
    with pytest.raises(ConsentRefused):
        gate.claim("Session0001", "shell", lambda: None)


def test_a_session_cannot_be_asked_twice() -> None:
    gate = ConsentGate()
    gate.ask(request())
    with pytest.raises(ConsentRefused):
        gate.ask(request())
