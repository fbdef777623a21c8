"""Starting the screen server a session offers (``desktop.choose_engine``), for one grant.

Engines: on X11 ``x11vnc -inetd`` on a socketpair (``x11vnc.py``); on wlroots
Wayland compositors wayvnc on a UNIX socket private to the user (``wayvnc.py``),
or ``wayvncall`` for every monitor; GNOME and KDE on Wayland through the
ScreenCast and RemoteDesktop portals into our own RFB server (``portalvnc.py``;
docs/wayland.md). Each gives the agent a process and, once it answers, one
connected socket (``ScreenLaunch``). When the screen cannot be shared the reason
is plain (``ScreenUnavailable``): no DISPLAY, a Wayland session without an
engine, x11vnc or wayvnc missing, a monitor the session does not have.

Test knob, off by default: ``ALLOWHELP_TEST_SCREEN_COMMAND`` (a command line)
runs that program instead of x11vnc, on the same socketpair, without the X
checks (and, in ``screen.py``, without the agent's own view-only filter: the
tests of the broker's filter need the bytes the broker let through). The test
suite uses it to put a hostile VNC server behind the agent. It is never needed
in production and the agent logs a warning when it is set.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Protocol

from allowhelp.agent.desktop import TEST_COMMAND_ENV, choose_engine, probe
from allowhelp.agent.monitors import session_monitors
from allowhelp.agent.rfbgreeting import RFB_VERSION
from allowhelp.agent.wayvnc import WayvncLaunch
from allowhelp.agent.x11vnc import X11VNC, x11vnc_argv
from allowhelp.protocol.monitors import ALL as ALL_MONITORS
from allowhelp.protocol.monitors import Monitor
from allowhelp.protocol.monitors import find as find_monitor
from allowhelp.protocol.monitors import refusal as monitor_refusal

log = logging.getLogger(__name__)

KEEP_ENV = ("DISPLAY", "XAUTHORITY", "HOME", "USER", "LOGNAME", "PATH", "LANG", "LC_ALL")
PORTAL_ENV = (
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "WAYLAND_DISPLAY",
    "XDG_CURRENT_DESKTOP",
    "XDG_SESSION_TYPE",
    "PYTHONPATH",
)


class ScreenUnavailable(RuntimeError):
    """This PC cannot share its screen; the message says why, for the technician."""


def screen_command(env: Mapping[str, str], *, view_only: bool, clip: str = "") -> list[str]:
    """The program to run for this grant, or ScreenUnavailable with the reason."""
    override = env.get(TEST_COMMAND_ENV, "").strip()
    if override:
        log.warning("%s is set: the screen is %r, not x11vnc", TEST_COMMAND_ENV, override)
        return shlex.split(override)
    if not env.get("DISPLAY"):
        raise ScreenUnavailable("no X display: the agent was started without DISPLAY")
    program = shutil.which(X11VNC, path=env.get("PATH") or os.defpath)
    if program is None:
        raise ScreenUnavailable("x11vnc is not installed on this PC (Debian: apt install x11vnc)")
    return x11vnc_argv(program, env["DISPLAY"], view_only=view_only, clip=clip)


def portal_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The session bus and the display for the portal engine (and where allowhelp is)."""
    kept = child_environment(env)
    for key in PORTAL_ENV:
        if key in env:
            kept[key] = env[key]
    return kept


def wlroots_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The portal engine's, and sway's socket and keyboard for ``wayvncall``."""
    kept = portal_environment(env)
    for key in ("SWAYSOCK", "XKB_DEFAULT_LAYOUT"):
        if key in env:
            kept[key] = env[key]
    return kept


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    kept = {key: env[key] for key in KEEP_ENV if key in env}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


class ScreenLaunch(Protocol):
    """A started screen server: its process, the viewer's socket once it answers, and
    what to remove after it (wayvnc's private folder)."""

    proc: subprocess.Popen[bytes]

    async def connect(self) -> socket.socket: ...

    def cleanup(self) -> None: ...


class PairLaunch:
    """x11vnc (or the test program) with one end of a socketpair as its stdin and stdout.

    ``greeting``: bytes already in the socket when the program starts (x11vnc: the
    viewer's version, said ahead; whoever bridges drops the viewer's own, SaidVersion)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], *, greeting: bytes = b"") -> None:
        self._mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.greeting = greeting
        try:
            if greeting:
                self._mine.sendall(greeting)  # queued in the pair: a few bytes never block
            self.proc = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own process group: close() kills it all
                close_fds=True,
            )
        except OSError:
            self._mine.close()
            raise
        finally:
            theirs.close()

    async def connect(self) -> socket.socket:
        return self._mine

    def cleanup(self) -> None:
        """Nothing on disk: a socketpair has no path."""


def chosen_monitor(env: Mapping[str, str], engine: str, choice: str) -> Monitor | None:
    """The monitor the grant names, as the session has it now (None: the default or all);
    ScreenUnavailable when the engine cannot show that choice (deny by default: a
    monitor the session does not have is refused, never shown as a black screen)."""
    if not choice:
        return None
    found = session_monitors(env, engine)
    problem = monitor_refusal(engine, found, choice)
    if problem:
        raise ScreenUnavailable(problem)
    return find_monitor(found, choice)


def greeted(launch: ScreenLaunch) -> bytes:
    """What the agent said to the server for the viewer (SaidVersion drops the viewer's own)."""
    return launch.greeting if isinstance(launch, PairLaunch) else b""


def launch_screen(
    env: Mapping[str, str], *, view_only: bool, monitor: str = "", greet: bool = True
) -> ScreenLaunch:
    """Start the engine this session offers (desktop.py), or ScreenUnavailable saying why.

    ``monitor``: the grant's choice (protocol/monitors.py): one monitor, ``all``, or ""."""
    offer = choose_engine(env, probe(env))
    if not offer.available:
        raise ScreenUnavailable(offer.problem)
    picked = chosen_monitor(env, offer.engine, monitor)
    try:
        if offer.engine == "portal":
            argv = [sys.executable, "-m", "allowhelp.agent.portalvnc"]
            argv += [] if view_only else ["--control"]
            argv += ["--all-monitors"] if monitor == ALL_MONITORS else []
            return PairLaunch(argv, portal_environment(env))
        if offer.engine == "wlroots" and monitor == ALL_MONITORS:
            argv = [sys.executable, "-m", "allowhelp.agent.wayvncall"]
            argv += [] if view_only else ["--control"]
            return PairLaunch(argv, wlroots_environment(env))
        if offer.engine == "wlroots":
            output = picked.name if picked else ""
            return WayvncLaunch(env, view_only=view_only, output=output)
        if offer.engine == "x11":
            clip = picked.geometry if picked else ""
            argv = screen_command(env, view_only=view_only, clip=clip)
            # the test knob's program gets the viewer's bytes as they are
            knob = bool(env.get(TEST_COMMAND_ENV, "").strip())
            greeting = RFB_VERSION if greet and not knob else b""
            return PairLaunch(argv, child_environment(env), greeting=greeting)
    except OSError as exc:
        raise ScreenUnavailable(
            f"the screen sharer could not start: {exc.strerror or exc}"
        ) from exc
    except RuntimeError as exc:
        raise ScreenUnavailable(str(exc)) from exc
    raise ScreenUnavailable(f"no screen engine for {offer.desktop}")
