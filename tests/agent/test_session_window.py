"""The PC user's session window shows the chat and each file transfer as it happens,
and a message from the technician opens a box to answer it (sent as chat).

The real ``AgentService`` and ``IndicatorFrontend`` drive a stand-in zenity (a
shell script that logs its arguments, like test_frontends.py's): what reaches
the screen is checked as the exact argv the real tool would get.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.errors import AgentError
from allowhelp.agent.frontends.indicator import IndicatorFrontend
from allowhelp.agent.frontends.toolkit import Toolkit
from allowhelp.agent.service import AgentService
from allowhelp.protocol.control import ChatMessage, ConsentRequest, FileTransfer, Message
from allowhelp.protocol.kinds import Kind

SID = "s-0123456789ab"


def service() -> tuple[AgentService, list[Message]]:
    config = AgentConfig("https://b", "", "", "127.0.0.1", 1, "", "a-agent", "ACME IT")
    agent = AgentService(config)
    sent: list[Message] = []
    agent.attach(sent.append)
    return agent, sent


def granted(agent: AgentService, kind: Kind = "files", chat: bool = True) -> None:
    request = ConsentRequest(SID, "ACME IT", "Eve", kind, "copy a file", "a b c", 30, chat=chat)
    agent.on_message(request)
    agent.decide(SID, allow=True, view_only=False, via="cli")


async def until(predicate: Callable[[], Any], what: str, timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def zenity(folder: Path, answer: str) -> Toolkit:
    """--info stays open; --entry prints ``answer`` (the user typed it and pressed Send).

    Each call's argv goes to ``calls`` in one write (fields end in \\x1f, calls in
    \\x1e): windows opened together run at once, and a write per argument let
    two calls' arguments interleave (a window then went missing from the log).
    """
    script = folder / "zenity"
    script.write_text(
        "#!/bin/sh\n"
        # one write per call: two windows opening at once must not interleave their argv
        'call=$(for a in "$@"; do printf "%s\\037" "$a"; done)\n'
        f'printf "%s\\036" "$call" >> "{folder}/calls"\n'
        f'case "$1" in --info) exec sleep 30 ;; --entry) printf "%s\\n" "{answer}" ;; esac\n'
    )
    script.chmod(stat.S_IRWXU)
    return Toolkit("zenity", str(script))


def shown(folder: Path, what: str) -> list[str]:
    """The --text of each window of that kind opened so far."""
    path = folder / "calls"
    calls = path.read_text().split("\x1e")[:-1] if path.exists() else []
    argvs = [call.split("\x1f") for call in calls]
    return [
        next(a for a in argv if a.startswith("--text="))[7:] for argv in argvs if argv[0] == what
    ]


async def test_transfers_and_chat_appear_and_a_message_gets_its_answer_box(
    tmp_path: Path,
) -> None:
    agent, sent = service()
    indicator = IndicatorFrontend(agent, zenity(tmp_path, "thanks, go ahead"))
    agent.frontends.append(indicator)
    try:
        granted(agent)
        await until(lambda: shown(tmp_path, "--info"), "the session window")
        agent.on_message(FileTransfer(SID, "report.pdf", "download", 1234, "done"))
        info = await until(
            lambda: [t for t in shown(tmp_path, "--info") if "report.pdf" in t], "the transfer"
        )
        assert "report.pdf from this PC, 1234 bytes, done" in info[-1]
        assert "your files, with your rights" in info[-1]
        agent.on_message(ChatMessage(SID, "may I copy \x1b[31mreport.pdf?", "Eve <b>"))
        boxes = await until(lambda: shown(tmp_path, "--entry"), "the answer box")
        assert "Eve <b>: may I copy [31mreport.pdf?" in boxes[0]  # plain text, no escape
        said = await until(
            lambda: [m for m in sent if isinstance(m, ChatMessage)], "the answer to be sent"
        )
        assert said[0] == ChatMessage(SID, "thanks, go ahead")
        lines = [(line.sender, line.text) for line in agent.messages(SID)]
        assert lines == [("Eve <b>", "may I copy [31mreport.pdf?"), ("you", "thanks, go ahead")]
        await until(
            lambda: any("you: thanks, go ahead" in t for t in shown(tmp_path, "--info")),
            "the answer in the window",
        )
    finally:
        await indicator.close()


async def test_news_for_a_session_that_is_not_running_is_dropped(tmp_path: Path) -> None:
    agent, _ = service()
    agent.on_message(ChatMessage("s-not-running-01", "hello"))
    agent.on_message(FileTransfer("s-not-running-01", "x", "upload", 1, "done"))
    assert agent.news.lines("s-not-running-01") == []


async def test_no_chat_to_a_broker_that_did_not_offer_it() -> None:
    """An older broker would take chat.message as a protocol break and drop the tunnel."""
    agent, sent = service()
    granted(agent, chat=False)
    with pytest.raises(AgentError, match="too old for chat"):
        agent.say(SID, "hello?")
    assert not [m for m in sent if isinstance(m, ChatMessage)]


async def test_the_owners_window_names_everyone_who_joined_and_who_left(tmp_path: Path) -> None:
    """#18: an invitee allowed into a session shows in that session's window (with
    how they take part) and has a window of their own; gone again once removed."""
    agent, _ = service()
    frontend = IndicatorFrontend(agent, zenity(tmp_path, ""))
    agent.frontends.append(frontend)
    granted(agent, "shell")
    invite = "i-0123456789ab"
    agent.on_message(
        ConsentRequest(
            invite,
            "ACME IT",
            "Bob Martin",
            "shell",
            "r",
            "d e f",
            30,
            joins=SID,
            mode="observe",
            username="bob",
        )
    )
    agent.decide(invite, allow=True, view_only=False, via="cli")
    texts = await until(
        lambda: [t for t in shown(tmp_path, "--info") if "Bob Martin (bob)" in t],
        "the owner's window naming Bob",
    )
    assert "observer" in texts[-1] and "Eve" in texts[-1]
    await until(  # Bob's own window: shown by its own task, maybe just after
        lambda: any(
            "Bob Martin also watches your terminal" in t for t in shown(tmp_path, "--info")
        ),
        "Bob's own window",
    )
    agent.end(invite)  # the user removes Bob (his window's button does this)
    await until(
        lambda: "Bob Martin" not in shown(tmp_path, "--info")[-1], "the owner's window without Bob"
    )
    await frontend.close()
