"""The PC user's prompt front-ends: desktop dialog, session window, terminal prompt.

Unit tests drive the front-ends with the real ``AgentService`` and stand-in
dialog tools (small scripts); the integration tests run a real broker and agent
under Xvfb, click the real zenity and Tk windows with xdotool, and answer a
real terminal prompt through a pty.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.consent import Pending
from allowhelp.agent.errors import AgentError
from allowhelp.agent.frontends import choose_frontends
from allowhelp.agent.frontends.dialog import DialogFrontend
from allowhelp.agent.frontends.indicator import IndicatorFrontend
from allowhelp.agent.frontends.terminal import TerminalFrontend
from allowhelp.agent.frontends.toolkit import Outcome, Toolkit, has_tkinter
from allowhelp.agent.service import AgentService
from allowhelp.protocol.control import ConsentDecision, ConsentRequest, Message, SessionEnd
from harness import (
    ADMIN,
    ADMIN_PW,
    PY,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    online,
    wait_for,
)
from xdesk import Xvfb, alive, cmdline, missing_tools

ORG = "ACME IT"
EVE, EVE_PW, EVE_NAME = "eve", "eve password 12345", "<i>Eve</i>\x1b[31m & Co"
HOSTILE_REASON = "<b>bold</b> \x1b]0;pwned\x07 &amp; \\101 <span"
SID = "s-0123456789ab"

# ---------------------------------------------------------------- unit level


def request(kind: str = "shell", reason: str = "printer broken", sid: str = SID) -> ConsentRequest:
    return ConsentRequest(
        session_id=sid,
        organisation=ORG,
        technician="<i>Eve</i>",
        kind=kind,  # type: ignore[arg-type]
        reason=reason,
        phrase="blue tiger lamp",
        timeout=30,
    )


def raw_pending(kind: str = "shell", reason: str = HOSTILE_REASON) -> Pending:
    now = time.monotonic()
    return Pending(request(kind, reason), now, now + 30)


def service() -> tuple[AgentService, list[Message]]:
    config = AgentConfig("https://b", "", "", "127.0.0.1", 1, "", "a-agent", ORG)
    agent = AgentService(config)
    sent: list[Message] = []
    agent.attach(sent.append)
    return agent, sent


async def until(predicate: Callable[[], Any], timeout: float = 5, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def fake_tool(folder: Path, question: str, info: str = "exec sleep 30") -> Toolkit:
    """A stand-in zenity: logs its arguments, then runs ``question`` or ``info``."""
    script = folder / "zenity"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$$ $1" >> "{folder}/calls"\n'
        f'case "$1" in --question) {question} ;; --info) {info} ;; esac\n'
    )
    script.chmod(stat.S_IRWXU)
    return Toolkit("zenity", str(script))


def calls(folder: Path) -> list[tuple[int, str]]:
    path = folder / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), what) for pid, what in (line.split(" ", 1) for line in lines)]


def decisions(sent: list[Message]) -> list[ConsentDecision]:
    return [m for m in sent if isinstance(m, ConsentDecision)]


def test_zenity_shows_the_exact_prompt_text_with_markup_disabled() -> None:
    clean = raw_pending(reason="<b>bold</b> &amp; \\101 <span")
    window = Toolkit("zenity", "/usr/bin/zenity").question(ORG, clean.prompt_text(), "shell", 29)
    argv = window.argv
    assert "--no-markup" in argv  # and with it zenity does no backslash unescaping either
    assert f"--text={clean.prompt_text()}" in argv  # exactly what the audit record holds
    assert "<i>Eve</i>" in clean.prompt_text() and "<b>bold</b>" in clean.prompt_text()
    assert "--ok-label=Allow help" in argv and "--cancel-label=Deny" in argv
    assert "--default-cancel" in argv  # a stray Enter never allows
    assert f"--title=Help request from {ORG}" in argv
    assert "--timeout=29" in argv
    assert not any(a.startswith("--extra-button") for a in argv)
    screen = Toolkit("zenity", "z").question(ORG, clean.prompt_text(), "screen", 29)
    assert "--extra-button=Allow view only" in screen.argv


def test_every_dialog_strips_control_characters_again() -> None:
    hostile = raw_pending().prompt_text()
    assert "\x1b" in hostile  # a raw request: the service would have cleaned it
    for name in ("zenity", "kdialog", "tk"):
        window = Toolkit(name, "prog").question(ORG + "\x1b[2J", hostile, "screen", 30)
        shown = " ".join(window.argv) + (window.stdin or b"").decode()
        assert "\x1b" not in shown and "\x07" not in shown, name
        assert "]0;pwned" in shown or "]0;pwned" in json.dumps(shown), name


def test_kdialog_gets_escaped_rich_text() -> None:
    text = raw_pending(reason="<b>bold</b> & <script>").prompt_text()
    argv = Toolkit("kdialog", "/usr/bin/kdialog").question(ORG, text, "screen", 30).argv
    body = argv[argv.index("--yesnocancel") + 1]
    assert body.startswith("<qt>") and body.endswith("</qt>")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;" in body
    assert "<b>" not in body and "<i>" not in body
    assert argv[argv.index("--yes-label") + 1] == "Allow help"
    assert argv[argv.index("--cancel-label") + 1] == "Deny"
    indicator = Toolkit("kdialog", "k").indicator(ORG, "<i>Eve</i> is connected")
    assert "&lt;i&gt;Eve&lt;/i&gt;" in indicator.argv[indicator.argv.index("--msgbox") + 1]


def test_tk_window_gets_plain_text_and_buttons_on_stdin() -> None:
    window = Toolkit("tk", PY).question(ORG, raw_pending().prompt_text(), "shell", 30)
    assert window.argv == [PY, "-m", "allowhelp.agent.frontends.tkwindow"]
    spec = json.loads(window.stdin or b"")
    assert "<i>Eve</i>" in spec["text"] and "\x1b" not in spec["text"]
    assert [key for key, _ in spec["buttons"]] == ["deny", "allow"]
    assert spec["on_close"] == "deny" and spec["timeout"] == 30 and spec["topmost"]


@pytest.mark.parametrize(
    ("tool", "kind", "code", "out", "answer"),
    [
        ("zenity", "shell", 0, "", "allow"),
        ("zenity", "shell", 1, "", "deny"),
        ("zenity", "screen", 1, "Allow view only\n", "view"),
        ("zenity", "shell", 1, "Allow view only\n", "deny"),
        ("zenity", "shell", 5, "", None),  # timed out: no answer
        ("zenity", "shell", -9, "", None),  # killed
        ("kdialog", "screen", 1, "", "view"),
        ("kdialog", "screen", 2, "", "deny"),
        ("kdialog", "shell", 1, "", "deny"),
        ("tk", "screen", 0, "view\n", "view"),
        ("tk", "shell", 0, "view\n", "deny"),
        ("tk", "shell", 0, "", None),
    ],
)
def test_answers(tool: str, kind: str, code: int, out: str, answer: str | None) -> None:
    assert Toolkit(tool, "x").answer(kind, Outcome(code, out)) == answer  # type: ignore[arg-type]


async def test_choose_frontends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    agent, _ = service()

    def only(*names: str) -> Callable[[str], str | None]:
        return lambda name: f"/usr/bin/{name}" if name in names else None

    def kinds(mode: str, env: dict[str, str], which: Any, tk: bool = False) -> list[str]:
        chosen = choose_frontends(agent, mode, env=env, which=which, tk=lambda: tk)
        return [type(f).__name__ for f in chosen]

    x11 = {"DISPLAY": ":5"}
    assert kinds("auto", x11, only("zenity")) == ["DialogFrontend", "IndicatorFrontend"]
    assert kinds("auto", {}, only("zenity")) == []
    assert kinds("auto", x11, only(), tk=False) == []
    assert kinds("none", x11, only("zenity")) == []
    tk = choose_frontends(agent, "dialog", env=x11, which=only(), tk=lambda: True)
    assert isinstance(tk[0], DialogFrontend) and tk[0].toolkit.name == "tk"
    kde = choose_frontends(agent, "auto", env={"WAYLAND_DISPLAY": "w"}, which=only("kdialog"))
    assert isinstance(kde[0], DialogFrontend) and kde[0].toolkit.name == "kdialog"
    assert kinds("auto", {"WAYLAND_DISPLAY": "w"}, only(), tk=True) == []  # Tk needs X
    with pytest.raises(AgentError, match="graphical"):
        choose_frontends(agent, "dialog", env={}, which=only("zenity"))
    with pytest.raises(AgentError, match="zenity or kdialog"):
        choose_frontends(agent, "dialog", env=x11, which=only(), tk=lambda: False)
    with pytest.raises(AgentError, match="terminal"):
        choose_frontends(agent, "terminal", env={}, which=only())
    with pytest.raises(AgentError, match="unknown prompt mode"):
        choose_frontends(agent, "popup", env={}, which=only())


async def test_dialog_click_decides_through_the_service(tmp_path: Path) -> None:
    agent, sent = service()
    dialog = DialogFrontend(agent, fake_tool(tmp_path, 'echo "Allow view only"; exit 1'))
    agent.frontends.append(dialog)
    try:
        agent.on_message(request("screen"))
        found = await until(lambda: decisions(sent), what="a decision")
        assert found[0].granted and found[0].view_only and found[0].via == "dialog"
        assert found[0].prompt == raw_pending("screen", "printer broken").prompt_text()
        assert [g.view_only for g in agent.gate.grants()] == [True]
    finally:
        await dialog.close()


async def test_answer_elsewhere_or_expiry_kills_the_dialog(tmp_path: Path) -> None:
    agent, sent = service()
    dialog = DialogFrontend(agent, fake_tool(tmp_path, "exec sleep 30"))
    agent.frontends.append(dialog)
    try:
        agent.on_message(request(sid="s-answered-on-cli"))
        agent.on_message(request(sid="s-left-to-expire"))
        shown = await until(lambda: len(calls(tmp_path)) == 2 and calls(tmp_path))
        assert [what for _, what in shown] == ["--question", "--question"]
        first, second = (pid for pid, _ in shown)
        agent.decide("s-answered-on-cli", allow=True, view_only=False, via="cli")
        agent._expire("s-left-to-expire")  # what the service's consent timer does
        await until(lambda: not alive(first) and not alive(second), what="dialogs killed")
        assert [d.via for d in decisions(sent)] == ["cli"]  # the killed dialogs decided nothing
    finally:
        await dialog.close()


async def test_indicator_end_session_and_reopen(tmp_path: Path) -> None:
    agent, sent = service()
    marker = tmp_path / "dismissed"
    # The first window is dismissed (Escape: exit 1); the second one's button is clicked.
    info = f'if [ -e "{marker}" ]; then exit 0; else touch "{marker}"; exit 1; fi'
    indicator = IndicatorFrontend(agent, fake_tool(tmp_path, "exit 0", info))
    agent.frontends.append(indicator)
    try:
        agent.on_message(request())
        agent.decide(SID, allow=True, view_only=False, via="cli")
        await until(lambda: not agent.gate.grants(), what="the session to end")
        ends = [m for m in sent if isinstance(m, SessionEnd)]
        assert [(e.session_id, e.reason) for e in ends] == [(SID, "user")]
        assert [what for _, what in calls(tmp_path)] == ["--info", "--info"]
    finally:
        await indicator.close()


async def test_indicator_closes_when_the_session_ends_elsewhere(tmp_path: Path) -> None:
    agent, sent = service()
    indicator = IndicatorFrontend(agent, fake_tool(tmp_path, "exit 0"))
    agent.frontends.append(indicator)
    try:
        agent.on_message(request())
        agent.decide(SID, allow=True, view_only=False, via="cli")
        pid, what = (await until(lambda: calls(tmp_path)))[0]
        assert what == "--info"
        agent.on_message(SessionEnd(session_id=SID, reason="technician"))
        await until(lambda: not alive(pid), what="the window to close")
        assert not [m for m in sent if isinstance(m, SessionEnd)]  # the user ended nothing
    finally:
        await indicator.close()


async def test_terminal_prompt_answers_and_survives_end_of_input() -> None:
    agent, sent = service()
    read_end, write_end = os.pipe()
    out = io.StringIO()
    terminal = TerminalFrontend(agent, fd=read_end, out=out)
    agent.frontends.append(terminal)
    terminal.start()
    try:
        agent.on_message(request("screen", reason=HOSTILE_REASON))
        text = out.getvalue()
        assert agent.gate.pending()[0].prompt_text() in text
        assert "<b>bold</b>" in text and "\x1b" not in text and "\x07" not in text
        assert "v to allow view only" in text
        os.write(write_end, b"maybe\n")
        await until(lambda: out.getvalue().count("Type a and Enter") == 2, what="choices again")
        os.write(write_end, b"v\n")
        await until(lambda: decisions(sent), what="a decision")
        assert (decisions(sent)[0].via, decisions(sent)[0].view_only) == ("terminal", True)
        os.write(write_end, b"e\n")
        await until(lambda: not agent.gate.grants(), what="the session to end")
        os.close(write_end)
        await until(lambda: not terminal.reading, what="end of input noticed")
    finally:
        await terminal.close()
        os.close(read_end)
    # A raw (unsanitised) request still prints as plain text.
    raw_out = io.StringIO()
    raw = TerminalFrontend(agent, fd=-1, out=raw_out)
    raw.prompt(raw_pending())
    assert "\x1b" not in raw_out.getvalue() and "<i>Eve</i>" in raw_out.getvalue()


# ------------------------------------------------- real broker, agent, display


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Broker]]:
    fleet = Fleet(tmp_path_factory.mktemp("frontends"))
    broker = fleet.broker(extra=["--consent-timeout", "20", "--organisation", ORG]).start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    broker.add_user(TECH, TECH_PW)
    done = broker_cli(
        "user", "add", EVE, "--role", "technician", "--password-stdin",
        "--full-name", EVE_NAME, "--data", str(broker.data), stdin=EVE_PW + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield fleet, broker
    fleet.close()


@pytest.fixture(scope="module")
def xvfb() -> Iterator[Xvfb]:
    if missing := missing_tools():
        pytest.fail(f"{', '.join(missing)} needed: run scripts/install test")
    screen = Xvfb.start()
    yield screen
    screen.stop()


def start_agent(fleet: tuple[Fleet, Broker], name: str, *args: str, env: dict[str, str]) -> Agent:
    group, broker = fleet
    agent = group.agent(name)
    assert agent.enroll(broker.token()).returncode == 0
    agent.start("--reconnect-cap", "2", *args, env=env)
    wait_for(lambda: online(broker, agent.agent_id), 20, "agent online")
    return agent


@pytest.fixture(scope="module")
def zenity_agent(fleet: tuple[Fleet, Broker], xvfb: Xvfb) -> Agent:
    return start_agent(fleet, "zenity-agent", "--prompt", "dialog", env=xvfb.env)


@pytest.fixture
def desk(fleet: tuple[Fleet, Broker]) -> Iterator[Desk]:
    desk = Desk.login(fleet[1], TECH, TECH_PW)
    yield desk
    desk.close()


def audit_record(broker: Broker, kind: str, session_id: str) -> dict[str, Any]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return next(r for r in records if r["type"] == kind and r["target"] == session_id)


PROMPT = f"^Help request from {ORG}$"
INDICATOR = "^Help session active"


def allow_then_end_from_the_windows(
    xvfb: Xvfb, desk: Desk, agent: Agent, shot: str | None = None
) -> None:
    session = desk.request(agent.agent_id, reason="Outlook crashes at start").json()
    window = xvfb.wait_window(PROMPT)
    if shot:
        xvfb.screenshot(shot)
    xvfb.click_button(window, lambda: desk.session(session["id"])["state"] == "active")
    granted = audit_record(desk.broker, "consent.granted", session["id"])["details"]
    assert granted["via"] == "dialog"
    assert "Outlook crashes at start" in granted["prompt"]
    assert not xvfb.windows(PROMPT)
    indicator = xvfb.wait_window(INDICATOR)
    if shot:
        xvfb.screenshot("session-indicator.png")
    ended = xvfb.click_button(
        indicator, lambda: (s := desk.session(session["id"]))["state"] == "ended" and s
    )
    assert ended["end_reason"] == "user"
    xvfb.wait_gone(INDICATOR)


@pytest.mark.x11
def test_zenity_dialog_allow_help_click_and_end_session(
    xvfb: Xvfb, zenity_agent: Agent, desk: Desk
) -> None:
    allow_then_end_from_the_windows(xvfb, desk, zenity_agent, shot="consent-dialog.png")


@pytest.mark.x11
def test_hostile_names_still_show_the_dialog_as_plain_text(
    xvfb: Xvfb, zenity_agent: Agent, fleet: tuple[Fleet, Broker]
) -> None:
    eve = Desk.login(fleet[1], EVE, EVE_PW)
    try:
        session = eve.request(zenity_agent.agent_id, "screen", reason=HOSTILE_REASON).json()
        window = xvfb.wait_window(PROMPT)
        xvfb.screenshot("consent-dialog-hostile.png")
        assert "IsViewable" in xvfb.run("xwininfo", "-id", window).stdout
        argv = cmdline(xvfb.pid(window))
        assert "--no-markup" in argv
        text = next(a for a in argv if a.startswith("--text="))
        assert "<i>Eve</i>" in text and "<b>bold</b>" in text and "<span" in text
        assert "\x1b" not in text and "\x07" not in text
        # Escape dismisses the dialog: that is a Deny, never an Allow.
        xvfb.press(window, ["Escape"], lambda: eve.session(session["id"])["state"] == "denied")
        denied = audit_record(fleet[1], "consent.denied", session["id"])["details"]
        assert denied["via"] == "dialog" and "<i>Eve</i>" in denied["prompt"]
        xvfb.wait_gone(PROMPT)
        # Deny has the focus; one step back is "Allow view only".
        again = eve.request(zenity_agent.agent_id, "screen", reason="look only").json()
        window = xvfb.wait_window(PROMPT)
        xvfb.press(
            window,
            ["shift+Tab", "space"],
            lambda: eve.session(again["id"])["state"] == "active",
        )
        assert eve.session(again["id"])["view_only"] is True
        xvfb.wait_window(INDICATOR)
        assert eve.client.post(f"/api/v1/sessions/{again['id']}/end").status_code == 200
        xvfb.wait_gone(INDICATOR)  # the session window closes itself
    finally:
        eve.close()


@pytest.mark.x11
def test_cli_answer_closes_the_dialog_and_stopping_the_agent_kills_it(
    xvfb: Xvfb, zenity_agent: Agent, desk: Desk
) -> None:
    answered = desk.request(zenity_agent.agent_id).json()
    pid = xvfb.pid(xvfb.wait_window(PROMPT))
    done = subprocess.run(
        [PY, "-m", "allowhelp.agent.cli", "deny", answered["id"], "--config",
         str(zenity_agent.config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not alive(pid), 10, "the dialog to be killed")
    xvfb.wait_gone(PROMPT)
    desk.request(zenity_agent.agent_id).json()
    pid = xvfb.pid(xvfb.wait_window(PROMPT))
    zenity_agent.stop()
    wait_for(lambda: not alive(pid), 10, "the dialog to die with the agent")
    xvfb.wait_gone(PROMPT)


@pytest.mark.x11
def test_tk_fallback_allow_and_end(
    xvfb: Xvfb, fleet: tuple[Fleet, Broker], desk: Desk, tmp_path: Path
) -> None:
    if not has_tkinter():
        pytest.skip("this Python has no tkinter: the Tk fallback cannot run here")
    no_tools = {**xvfb.env, "PATH": str(tmp_path)}  # neither zenity nor kdialog
    agent = start_agent(fleet, "tk-agent", "--prompt", "dialog", env=no_tools)
    allow_then_end_from_the_windows(xvfb, desk, agent)
    assert "consent dialogs with tk" in agent.log.read_text()


def read_until(fd: int, marker: bytes, timeout: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; saw {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 4096)
    return seen


def test_terminal_prompt_in_a_real_pty(fleet: tuple[Fleet, Broker], desk: Desk) -> None:
    group, broker = fleet
    agent = group.agent("tty-agent")
    assert agent.enroll(broker.token()).returncode == 0
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    with agent.log.open("ab") as log:
        agent.proc = subprocess.Popen(
            [PY, "-m", "allowhelp.agent.cli", "run", "--config", str(agent.config),
             "--reconnect-cap", "2", "--prompt", "terminal"],
            stdin=slave, stdout=slave, stderr=log, env=env,
        )  # fmt: skip
    os.close(slave)
    try:
        wait_for(lambda: online(broker, agent.agent_id), 20, "agent online")
        session = desk.request(agent.agent_id, reason=HOSTILE_REASON).json()
        shown = read_until(master, b"d to deny")
        assert session["phrase"].encode() in shown and b"<b>bold</b>" in shown
        assert b"\x1b" not in shown and b"\x07" not in shown
        os.write(master, b"a\n")
        desk.wait_state(session["id"], "active")
        assert audit_record(broker, "consent.granted", session["id"])["details"]["via"] == (
            "terminal"
        )
        read_until(master, b"Type e and Enter to end it")
        os.write(master, b"e\n")
        assert desk.wait_state(session["id"], "ended")["end_reason"] == "user"
        os.write(master, b"\x04")  # Ctrl-D: end of input; the agent must keep running
        wait_for(lambda: "the terminal closed" in agent.log.read_text(), 10, "EOF noticed")
        later = desk.request(agent.agent_id).json()
        assert later["state"] == "awaiting_consent" and agent.proc.poll() is None
    finally:
        os.close(master)
        agent.stop()
