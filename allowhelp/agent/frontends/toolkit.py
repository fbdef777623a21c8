"""Which desktop dialog tool to use, and the exact windows it is asked to show.

Pure functions without I/O, so what reaches the screen can be tested as data.
Every string shown is hostile (a technician's name, a reason): zenity gets
``--no-markup`` (and then also skips its backslash unescaping), kdialog gets
the text HTML-escaped inside ``<qt>``, Tk shows plain text, and control
characters are stripped again here whatever the service already did.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from allowhelp.agent.i18n import N_, _
from allowhelp.protocol.kinds import Kind
from allowhelp.protocol.text import plain_text

ToolName = Literal["zenity", "kdialog", "tk"]
Answer = Literal["allow", "view", "deny"]
Which = Callable[[str], str | None]

# Button labels (English source; shown translated: ``label``).
ALLOW, VIEW_ONLY, DENY, END = N_("Allow help"), N_("Allow view only"), N_("Deny"), N_("End session")
REPLY, SEND = N_("Write to the technician…"), N_("Send")
TK_MODULE = "allowhelp.agent.frontends.tkwindow"


@dataclass(frozen=True)
class Window:
    """One dialog process to start: its command line and what it reads on stdin."""

    argv: list[str]
    stdin: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """How a dialog process ended."""

    returncode: int
    stdout: str


def plain_lines(text: str) -> list[str]:
    """Each line without control characters (terminal escapes, bidi overrides)."""
    return [plain_text(line, 1000) for line in text.split("\n")]


def plain(text: str) -> str:
    return "\n".join(plain_lines(text))


def prompt_title(organisation: str) -> str:
    # Starts with a fixed word: a hostile name can never look like an option.
    name = plain_text(organisation, 100) or _("your help desk")
    return _("Help request from %(organisation)s") % {"organisation": name}


def indicator_title(organisation: str) -> str:
    name = plain_text(organisation, 100) or _("help desk")
    return _("Help session active (%(organisation)s)") % {"organisation": name}


def has_tkinter() -> bool:
    return importlib.util.find_spec("_tkinter") is not None


def find_toolkit(
    which: Which = shutil.which, tk: Callable[[], bool] = has_tkinter
) -> Toolkit | None:
    """zenity, else kdialog, else Tk in this very Python; None when there is none."""
    tools: tuple[ToolName, ...] = ("zenity", "kdialog")
    for name in tools:
        program = which(name)
        if program:
            return Toolkit(name, program)
    if tk():
        return Toolkit("tk", sys.executable)
    return None


@dataclass(frozen=True)
class Toolkit:
    name: ToolName
    program: str

    # the consent question

    def question(self, organisation: str, text: str, kind: Kind, timeout: int) -> Window:
        title = prompt_title(organisation)
        screen = kind == "screen"
        allow, view_only, deny = _(ALLOW), _(VIEW_ONLY), _(DENY)
        if self.name == "zenity":
            argv = [
                self.program,
                "--question",
                "--no-markup",
                "--default-cancel",
                f"--title={title}",
                f"--text={plain(text)}",
                f"--ok-label={allow}",
                f"--cancel-label={deny}",
                "--width=460",
                f"--timeout={max(1, timeout)}",
            ]
            if screen:
                argv.append(f"--extra-button={view_only}")
            return Window(argv)
        if self.name == "kdialog":
            if screen:
                box = ["--yesnocancel", qt_text(text), "--no-label", view_only]
                box += ["--cancel-label", deny]
            else:
                box = ["--yesno", qt_text(text), "--no-label", deny]
            return Window([self.program, "--title", title, *box, "--yes-label", allow])
        buttons = [["view", view_only], ["deny", deny], ["allow", allow]]
        return self._tk(title, text, buttons if screen else buttons[1:], "deny", timeout)

    def answer(self, kind: Kind, outcome: Outcome) -> Answer | None:
        """The user's answer, or None: no answer (timed out, killed, tool failed)."""
        code, out = outcome.returncode, outcome.stdout.strip()
        if self.name == "zenity":
            if code == 0:
                return "allow"
            if code == 1:  # Deny, Escape, or the extra button (which prints its label)
                return "view" if out == _(VIEW_ONLY) and kind == "screen" else "deny"
            return None
        if self.name == "kdialog":
            codes: dict[int, Answer] = {0: "allow", 1: "view", 2: "deny"}
            if kind != "screen":
                codes = {0: "allow", 1: "deny"}
            return codes.get(code)
        if code == 0 and out in ("allow", "view", "deny"):
            return "deny" if out == "view" and kind != "screen" else out  # type: ignore[return-value]
        return None

    # the "session active" window

    def indicator(self, organisation: str, text: str) -> Window:
        """The session window: what runs, the chat and file transfers so far (in
        ``text``) and "End session"; Tk's also has a button to write to the technician
        (with every tool, a message from the technician opens ``entry`` to answer it)."""
        title = indicator_title(organisation)
        if self.name == "zenity":
            return Window(
                [
                    self.program,
                    "--info",
                    "--no-markup",
                    f"--title={title}",
                    f"--text={plain(text)}",
                    f"--ok-label={_(END)}",
                    "--width=420",
                ]
            )
        if self.name == "kdialog":  # a message box: writing back is `allowhelp-agent chat`
            return Window(
                [self.program, "--title", title, "--msgbox", qt_text(text), "--ok-label", _(END)]
            )
        return self._tk(title, text, [["reply", _(REPLY)], ["end", _(END)]], "", None)

    def ends_session(self, outcome: Outcome) -> bool:
        """Did the user click "End session" (not merely close the window)?"""
        if self.name == "tk":
            return outcome.returncode == 0 and outcome.stdout.strip() == "end"
        return outcome.returncode == 0

    def wants_reply(self, outcome: Outcome) -> bool:
        """Did the user click the button to write to the technician?"""
        return self.name == "tk" and outcome.returncode == 0 and outcome.stdout.strip() == "reply"

    # writing to the technician

    def entry(self, organisation: str, text: str) -> Window:
        """One line of text for the technician; the tool prints it (nothing: cancelled)."""
        title = indicator_title(organisation)
        if self.name == "zenity":
            argv = [self.program, "--entry", f"--title={title}", f"--text={plain(text)}"]
            return Window([*argv, f"--ok-label={_(SEND)}", "--width=420"])
        if self.name == "kdialog":
            return Window([self.program, "--title", title, "--inputbox", plain(text)])
        spec = {"title": title, "text": plain(text), "entry": True, "topmost": True}
        return Window([self.program, "-m", TK_MODULE], json.dumps(spec).encode())

    @staticmethod
    def entered(outcome: Outcome) -> str:
        """What the user typed, or "" when they cancelled (the service checks the length)."""
        if outcome.returncode != 0:
            return ""
        return plain_text(outcome.stdout.rstrip("\n"), 4000)

    def _tk(
        self, title: str, text: str, buttons: list[list[str]], on_close: str, timeout: int | None
    ) -> Window:
        spec = {
            "title": title,
            "text": plain(text),
            "buttons": buttons,
            "on_close": on_close,
            "timeout": timeout,
            "topmost": True,
        }
        return Window([self.program, "-m", TK_MODULE], json.dumps(spec).encode())


def qt_text(text: str) -> str:
    """Qt rich text made of escaped plain text: tags in it show as characters."""
    import html  # noqa: PLC0415 - kdialog's alone; html loads its 2,000 entities

    return "<qt>" + "<br>".join(html.escape(line) for line in plain_lines(text)) + "</qt>"
