"""The agent's own rules for invitations (#18), whatever the broker lets through:
an observer's keystrokes never reach the shell, an invitation needs a running
session of the same kind, an observer's grant is view-only whatever was clicked,
and invitations end with their session."""

from __future__ import annotations

import pytest

from allowhelp.agent.consent import ConsentGate, ConsentRefused, Grant
from allowhelp.agent.participants import MAX_BACKLOG, ParticipantHub
from allowhelp.protocol.control import ConsentRequest, decode
from allowhelp.protocol.hostile_json import ProtocolError

SESSION, INVITE = "sessionAAAAAAAAA", "inviteBBBBBBBBBB"


class Shell:
    def __init__(self) -> None:
        self.typed = b""
        self.sizes: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.typed += data

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))


class Sink:
    def __init__(self, backlog: int = 0) -> None:
        self.seen = b""
        self.waiting = backlog
        self.finished: str | None = None

    def write(self, data: bytes) -> None:
        self.seen += data

    def backlog(self) -> int:
        return self.waiting

    def finish(self, status: int, error: str | None = None) -> None:
        self.finished = error


def grant(mode: str, session_id: str = INVITE) -> Grant:
    return Grant(session_id, "shell", mode != "control", "Bob", joins=SESSION, mode=mode)


def request(
    session_id: str, *, joins: str = "", mode: str = "", kind: str = "shell"
) -> ConsentRequest:
    return ConsentRequest(
        session_id=session_id,
        organisation="IT",
        technician="Bob Martin",
        kind=kind,  # type: ignore[arg-type]
        reason="r",
        phrase="one two three",
        timeout=60,
        joins=joins,
        mode=mode,
        username="bob",
    )


def test_an_observers_keystrokes_and_resizes_never_reach_the_shell() -> None:
    hub, shell = ParticipantHub(), Shell()
    hub.open(SESSION, shell)
    observer = hub.join(grant("observe"), Sink())
    observer.write(b"rm -rf ~\r")
    observer.resize(10, 10)
    assert shell.typed == b"" and shell.sizes == []
    assert observer.dropped == len(b"rm -rf ~\r")
    controller = hub.join(grant("control", "inviteCCCCCCCCCC"), Sink())
    controller.write(b"ls\r")
    controller.resize(10, 10)
    assert shell.typed == b"ls\r" and shell.sizes == []  # only the owner sizes it


def test_output_goes_to_every_participant_and_a_stalled_one_is_closed() -> None:
    hub = ParticipantHub()
    hub.open(SESSION, Shell())
    quick, stalled = Sink(), Sink(backlog=MAX_BACKLOG + 1)
    hub.join(grant("observe"), quick)
    hub.join(grant("observe", "inviteCCCCCCCCCC"), stalled)
    hub.output(SESSION, b"hello")
    assert quick.seen == b"hello"
    assert stalled.seen == b"" and stalled.finished
    assert [m.grant.session_id for m in hub.members(SESSION)] == [INVITE]


def test_joining_a_shell_that_is_not_running_is_refused() -> None:
    with pytest.raises(RuntimeError):
        ParticipantHub().join(grant("observe"), Sink())


def test_the_gate_asks_only_into_a_running_session_of_that_kind() -> None:
    gate = ConsentGate()
    with pytest.raises(ConsentRefused):
        gate.ask(request(INVITE, joins=SESSION, mode="control"))
    gate.ask(request(SESSION))
    gate.decide(SESSION, allow=True, view_only=False, via="cli")
    with pytest.raises(ConsentRefused):
        gate.ask(request(INVITE, joins=SESSION, mode="control", kind="screen"))
    pending = gate.ask(request(INVITE, joins=SESSION, mode="observe"))
    assert "also wants to watch your terminal" in pending.prompt_text()
    decision = gate.decide(INVITE, allow=True, view_only=False, via="cli")
    assert decision.view_only  # an observer is view-only whatever was clicked
    (member,) = gate.members(SESSION)
    assert member.role == "observer" and member.username == "bob"
    closed: list[str] = []
    gate.claim(INVITE, "shell", lambda: closed.append(INVITE))
    assert gate.revoke_with_members(SESSION) == [INVITE, SESSION]
    assert closed == [INVITE] and gate.grants() == []


def test_a_files_session_cannot_be_joined_whatever_the_broker_says() -> None:
    """The broker never invites to files (one person's SFTP, read-write); a broker that
    asks anyway (hostile, or holding a stolen key) is refused by the agent, before
    anyone is asked: the prompt would have said "watch your terminal"."""
    gate = ConsentGate()
    gate.ask(request(SESSION, kind="files"))
    gate.decide(SESSION, allow=True, view_only=False, via="cli")
    for mode in ("observe", "control"):
        with pytest.raises(ConsentRefused, match="a files session cannot be joined"):
            gate.ask(request(INVITE, joins=SESSION, mode=mode, kind="files"))
    assert gate.pending() == []
    with pytest.raises(ConsentRefused):
        gate.claim(INVITE, "files", lambda: None)


def test_the_control_channel_refuses_a_malformed_invitation() -> None:
    line = request(INVITE, joins="../etc", mode="observe").encode()
    with pytest.raises(ProtocolError):
        decode(line)
    with pytest.raises(ProtocolError):
        decode(request(INVITE, joins=SESSION, mode="root").encode())


@pytest.mark.parametrize("kind", ["shell", "admin-shell", "screen"])
def test_a_joiners_prompt_says_what_they_will_see(kind: str) -> None:
    """The PC user is told an administrator terminal is root, and that a terminal's
    joiner also sees its recent output (the broker's scrollback), before they click."""
    gate = ConsentGate()
    gate.ask(request(SESSION, kind=kind))
    gate.decide(SESSION, allow=True, view_only=False, via="cli")
    text = gate.ask(request(INVITE, joins=SESSION, mode="control", kind=kind)).prompt_text()
    assert ("administrator (root) terminal" in text) == (kind == "admin-shell")
    assert ("last 64 KiB of output" in text) == (kind != "screen")
    assert "Verification phrase" in text
