"""The PC user's prompt front-ends, chosen for the session the agent runs in.

``auto`` shows a desktop dialog (and the "session active" window) when there
is a graphical session and a dialog tool, and a terminal prompt when the agent
runs in the foreground of a terminal; both may be active, and the local
control socket (CLI) always is. Each one only calls ``service.decide`` and
``service.end``: they are clients of the same logic, not a second path.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from allowhelp.agent.consentviews import ConsentFrontend, ConsentService
from allowhelp.agent.errors import AgentError
from allowhelp.agent.frontends.dialog import DialogFrontend
from allowhelp.agent.frontends.indicator import IndicatorFrontend
from allowhelp.agent.frontends.terminal import TerminalFrontend
from allowhelp.agent.frontends.toolkit import Which, find_toolkit, has_tkinter
from allowhelp.agent.i18n import _

log = logging.getLogger(__name__)

MODES = ("auto", "dialog", "terminal", "none")

__all__ = ["MODES", "choose_frontends", "close_frontends"]


@runtime_checkable
class Closable(Protocol):
    async def close(self) -> None: ...


def graphical(env: Mapping[str, str]) -> bool:
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def interactive_terminal(*, foreground_only: bool) -> bool:
    """stdin and stdout are a terminal (and, if asked, we are its foreground job)."""
    if not (os.isatty(0) and os.isatty(1)):
        return False
    if not foreground_only:
        return True
    try:  # a background job reading its terminal would be stopped (SIGTTIN)
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # not our controlling terminal: no job control applies
        return True


def choose_frontends(
    service: ConsentService,
    mode: str,
    *,
    env: Mapping[str, str] | None = None,
    which: Which = shutil.which,
    tk: Callable[[], bool] = has_tkinter,
) -> list[ConsentFrontend]:
    """The front-ends for ``mode``; a mode asked for explicitly that cannot work raises."""
    if mode not in MODES:
        raise AgentError(
            _("unknown prompt mode %(mode)r: use one of %(modes)s")
            % {"mode": mode, "modes": ", ".join(MODES)}
        )
    env = os.environ if env is None else env
    chosen: list[ConsentFrontend] = []
    if mode in ("auto", "dialog"):
        chosen += _desktop(service, mode, env, which, tk)
    if mode == "terminal" or (mode == "auto" and interactive_terminal(foreground_only=True)):
        if not interactive_terminal(foreground_only=False):
            raise AgentError(_("--prompt terminal needs a terminal on stdin and stdout"))
        terminal = TerminalFrontend(service)
        terminal.start()
        chosen.append(terminal)
    log.info("consent prompts: %s", ", ".join(type(f).__name__ for f in chosen) or "CLI only")
    return chosen


def _desktop(
    service: ConsentService,
    mode: str,
    env: Mapping[str, str],
    which: Which,
    tk: Callable[[], bool],
) -> list[ConsentFrontend]:
    if not graphical(env):
        if mode == "dialog":
            raise AgentError(_("--prompt dialog: no graphical session (DISPLAY is not set)"))
        return []
    toolkit = find_toolkit(which, lambda: bool(env.get("DISPLAY")) and tk())  # Tk needs X
    if toolkit is None:
        if mode == "dialog":
            raise AgentError(_("--prompt dialog: install zenity or kdialog (or python3-tk)"))
        log.warning("no zenity, kdialog or Tk: answer help requests with `allowhelp-agent allow`")
        return []
    log.info("consent dialogs with %s", toolkit.name)
    return [DialogFrontend(service, toolkit), IndicatorFrontend(service, toolkit)]


async def close_frontends(frontends: list[ConsentFrontend]) -> None:
    """Close every window and stop reading the terminal (the agent is stopping)."""
    for frontend in frontends:
        if isinstance(frontend, Closable):
            await frontend.close()
