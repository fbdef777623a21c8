"""The machine service's logic without sockets: helper packets, who is signed in,
whose request is whose, and the refusals said at once."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.consent import ConsentGate, ConsentRefused, Grant, Pending
from allowhelp.agent.helpcodes import HELP_CODES_FILE, AskedHelp
from allowhelp.agent.helper import ConsentHelperView, SessionHelper
from allowhelp.agent.seqpacket import PacketConn
from allowhelp.agent.service import AgentService, NotConnected
from allowhelp.agent.signedin import HelperInfo, choose, logind_active_uid
from allowhelp.protocol import helper as hp
from allowhelp.protocol.control import (
    ConsentRequest,
    HelpCode,
    HelpRequest,
    Message,
    SessionEnd,
)
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import EndReason, channel_subsystem, parse_channel_subsystem

CONFIG = AgentConfig("https://b", "pem", "fp", "127.0.0.1", 2222, "key", "a-1", "ACME")


def request(session_id: str = "s-00000001", kind: str = "shell") -> ConsentRequest:
    return ConsentRequest(session_id, "ACME", "Tech", kind, "why", "a b c", 30.0)  # type: ignore[arg-type]


def test_packets_round_trip() -> None:
    for packet in (
        hp.Allow("s-00000001", True, "dialog"),
        hp.Open("s-00000001", "shell", "xterm-256color", 80, 24, False),
        hp.Exited("s-00000001", -9, "killed"),
        hp.End(),
    ):
        assert hp.decode(packet.encode()) == packet


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 5000,
        b'{"type": "allow", "session_id": {"a": {"b": {"c": 1}}}}',
        b'{"type": "allow", "session_id": "../../etc"}',
        b'{"type": "allow"}',
        b'{"type": "exec", "command": "id"}',
        b'{"type": "open", "session_id": "s-00000001", "kind": "root", "term": "x",'
        b' "cols": 1, "rows": 1, "view_only": false}',
        b'{"type": "exited", "session_id": "s-00000001", "status": true}',
        b'{"type": "exited", "session_id": "s-00000001", "status": 99999999}',
        b'{"type": "allow", "session_id": "s-00000001", "via": "root"}',
        b"\xff\xfe",
        b"x" * (hp.MAX_PACKET + 1),
    ],
)
def test_hostile_packets_are_refused_with_one_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        hp.decode(data)


def test_admin_shell_has_its_own_channel() -> None:
    name = channel_subsystem("admin-shell", "s-00000001")
    assert name == "allowhelp.admin-shell/s-00000001"
    assert parse_channel_subsystem(name) == ("admin-shell", "s-00000001")
    assert parse_channel_subsystem("allowhelp.shell/s-00000001") == ("shell", "s-00000001")


def test_signed_in_without_logind_is_the_newest_helper() -> None:
    old, new = HelperInfo(1, 1001, 10), HelperInfo(2, 1002, 20)
    assert choose([], None) is None
    assert choose([new, old], None) == new


def test_signed_in_with_logind_is_the_active_users_helper() -> None:
    alice, bob = HelperInfo(1, 1001, 10), HelperInfo(2, 1002, 20)
    assert choose([alice, bob], lambda: 1001) == alice
    assert choose([alice, bob], lambda: 1003) is None  # active user has no helper
    assert choose([alice, bob], lambda: None) is None  # a greeter


def test_another_uid_can_neither_see_nor_answer() -> None:
    gate = ConsentGate()
    gate.ask(request(), owner=1001)
    assert gate.pending(1002) == []
    with pytest.raises(ConsentRefused, match="no request"):
        gate.decide("s-00000001", allow=True, view_only=False, via="cli", owner=1002)
    assert [p.request.session_id for p in gate.pending(1001)] == ["s-00000001"]
    gate.decide("s-00000001", allow=True, view_only=False, via="cli", owner=1001)
    assert gate.grants(1002) == [] and len(gate.grants(1001)) == 1


def test_the_admin_shell_prompt_says_what_it_is() -> None:
    pending = ConsentGate().ask(request(kind="admin-shell"), owner=1001)
    assert "asks for an administrator (root) shell on this PC" in pending.prompt_text()


def _service(signed_in: int | None, *, system: bool) -> tuple[AgentService, list[Message]]:
    service = AgentService(CONFIG, signed_in=(lambda: signed_in) if system else None)
    sent: list[Message] = []
    service.attach(sent.append)
    return service, sent


def _ask(service: AgentService, kind: str) -> None:
    async def go() -> None:
        service.on_message(request(kind=kind))

    asyncio.run(go())


@pytest.mark.parametrize(
    ("system", "kind", "reason"),
    [
        (True, "shell", "nobody_signed_in"),  # the machine service, nobody signed in
        (False, "admin-shell", "unsupported"),  # a per-user agent has no root to give
    ],
    ids=["nobody-signed-in", "per-user-admin-shell"],
)
def test_what_nobody_can_be_asked_is_refused_at_once(
    system: bool, kind: str, reason: EndReason
) -> None:
    service, sent = _service(None, system=system)
    _ask(service, kind)
    assert sent == [SessionEnd("s-00000001", reason)]
    assert service.gate.pending() == []


def test_a_user_without_helper_loses_their_sessions() -> None:
    service, sent = _service(1001, system=True)
    _ask(service, "shell")
    assert [p.owner for p in service.gate.pending()] == [1001]
    service.decide("s-00000001", allow=True, view_only=False, via="cli", owner=1001)
    assert service.end(owner=1002) == []  # not theirs to end
    assert service.owner_gone(1001) == ["s-00000001"]
    assert sent[-1] == SessionEnd("s-00000001", "signed_out")
    assert service.gate.grants() == []


def _machine_service(signed_in: list[int], folder: Path | None) -> AgentService:
    service = AgentService(CONFIG, signed_in=lambda: signed_in[0])
    if folder is not None:
        service.asked_help = AskedHelp(folder)  # as runner.py's machine service
    return service


def _ask_help(service: AgentService, owner: int, code: str) -> None:
    sent: list[Message] = []
    service.attach(sent.append)

    async def go() -> None:
        asking = asyncio.create_task(service.request_help("printer", owner))
        await asyncio.sleep(0)
        (asked,) = sent
        assert isinstance(asked, HelpRequest)
        service.on_message(HelpCode(ref=asked.ref, code=code, expires_in=1800.0))
        assert (await asking).code == code

    asyncio.run(go())


def _prompts(service: AgentService, signed_in: list[int], *asked: tuple[int, str]) -> list[str]:
    """The consent requests with these help codes, each while its uid is signed in."""

    async def go() -> None:  # the gate's timers need a loop
        for n, (uid, code) in enumerate(asked, start=1):
            signed_in[0] = uid
            service.on_message(replace(request(f"s-0000000{n}"), help_code=code))

    asyncio.run(go())
    pending = service.gate.pending()
    assert [p.owner for p in pending] == [uid for uid, _ in asked]
    return [p.prompt_text() for p in pending]


def test_you_asked_for_help_is_said_only_to_the_user_who_asked(tmp_path: Path) -> None:
    """On a shared PC the broker's request carries the help code alone: the user
    signed in when the technician calls may not be the one who asked for it; a code
    this PC did not see asked is said to nobody (deny by default)."""
    signed_in = [1001]
    service = _machine_service(signed_in, tmp_path)
    _ask_help(service, 1001, "123 456")
    # alice leaves, bob signs in; the technician calls back; then for alice; then a
    # code nobody here asked for
    bob, alice, unknown = _prompts(
        service, signed_in, (1002, "123 456"), (1001, "123 456"), (1001, "999 999")
    )
    assert "You asked for help" not in bob
    assert "You asked for help (code 123 456)." in alice
    assert "You asked for help" not in unknown


def test_a_help_code_is_said_as_this_pc_reads_it(tmp_path: Path) -> None:
    """A broker (or a stolen key) sending a code with no digits, or with words after
    the asker's digits, gets no line of its own onto a shared PC's prompt."""
    signed_in = [1001]
    service = _machine_service(signed_in, tmp_path)
    _ask_help(service, 1001, "123 456")
    lettered, worded = _prompts(service, signed_in, (1001, "abc"), (1001, "123456 ring Bob"))
    assert "You asked for help" not in lettered
    assert "You asked for help (code 123 456)." in worded and "Bob" not in worded


def test_who_asked_for_help_outlives_the_agent(tmp_path: Path) -> None:
    """The doorbell's next full agent, or a restarted service, still knows whose code
    it is: kept in the machine service's folder, root's alone."""
    signed_in = [1001]
    _ask_help(_machine_service(signed_in, tmp_path), 1001, "123 456")
    kept = tmp_path / HELP_CODES_FILE
    assert kept.stat().st_mode & 0o777 == 0o600
    later = _machine_service(signed_in, tmp_path)  # a new process, the same folder
    bob, alice = _prompts(later, signed_in, (1002, "123 456"), (1001, "123 456"))
    assert "You asked for help" not in bob
    assert "You asked for help (code 123 456)." in alice
    kept.write_text('{"codes": [{"code": "123456", "owner": "root"')  # damaged: none shown
    damaged = _machine_service(signed_in, tmp_path)
    (alice,) = _prompts(damaged, signed_in, (1001, "123 456"))
    assert "You asked for help" not in alice


def test_a_per_user_agent_says_its_users_help_code() -> None:
    """One user: a code this process did not see asked (an agent restarted since) is
    still said, as it can only be theirs."""
    service = AgentService(CONFIG)
    service.attach(lambda message: None)

    async def go() -> None:
        service.on_message(replace(request("s-00000001"), help_code="999 999"))

    asyncio.run(go())
    (pending,) = service.gate.pending()
    assert "You asked for help (code 999 999)." in pending.prompt_text()


def test_answers_are_json_with_ok() -> None:
    raw = hp.answer(False, error="no")
    assert json.loads(raw) == {"type": "answer", "ok": False, "error": "no"}
    assert hp.read_answer(raw)["error"] == "no"
    with pytest.raises(ProtocolError):
        hp.read_answer(b'{"type": "prompt"}')


def test_logind_answer_is_read_from_loginctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logind path with a stand-in loginctl (this machine has no systemd)."""
    fake = tmp_path / "loginctl"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  show-seat) echo c7 ;;\n"
        '  show-session) [ "$2" = c7 ] && echo 1001 ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert logind_active_uid() == 1001
    fake.write_text("#!/bin/sh\nexit 1\n")  # logind not answering: nobody
    assert logind_active_uid() is None


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def prompt(self, pending: Pending) -> None:
        self.seen.append(f"prompt {pending.request.session_id} {pending.prompt_text()}")

    def prompt_closed(self, session_id: str) -> None:
        self.seen.append(f"closed {session_id}")

    def active(self, grant: Grant) -> None:
        self.seen.append(f"active {grant.session_id}")

    def ended(self, session_id: str) -> None:
        self.seen.append(f"ended {session_id}")


def test_the_helper_shows_what_the_service_says() -> None:
    """The session helper's front-ends get the same calls as the agent's own."""
    recorder = Recorder()
    view = ConsentHelperView()
    helper = SessionHelper(Path("/nonexistent/agent.sock"), [recorder], view)
    text = ConsentGate().ask(request(kind="admin-shell")).prompt_text()

    async def go() -> None:
        conn = cast(PacketConn, None)
        helper._handle(
            conn,
            hp.Prompt("s-00000001", "Tech", "ACME", "admin-shell", "why", "a b c", "", 30, text),
        )
        helper._handle(conn, hp.PromptClosed("s-00000001"))
        helper._handle(conn, hp.Active("s-00000001", "admin-shell", False, "Tech", "ACME"))
        assert [g.session_id for g in view.gate.grants()] == ["s-00000001"]
        helper._handle(conn, hp.Ended("s-00000001"))

    asyncio.run(go())
    assert recorder.seen == [
        f"prompt s-00000001 {text}",
        "closed s-00000001",
        "active s-00000001",
        "ended s-00000001",
    ]
    assert view.gate.grants() == []
    with pytest.raises(NotConnected):
        view.decide("s-00000001", allow=True, view_only=False, via="dialog")
