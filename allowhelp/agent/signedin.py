"""Who is signed in at the PC: the user a new help request is put to.

The machine service knows the session helpers connected to it, each by its
kernel-given uid (``SO_PEERCRED``). Who of them is *signed in*, in the sense
"sits at the screen now":

- where logind runs (systemd booted the machine: ``/run/systemd/system``,
  and ``loginctl`` is installed), the owner of seat0's active session — and only if that user
  has a helper connected (nobody else could see the prompt); a greeter, a
  locked-out switch to another user without a helper: nobody;
- without logind (containers, this project's CI machine, non-systemd
  distributions), the helper that connected last. Deterministic, and right
  for the common case of one graphical session; with several, the newest
  login wins (documented in docs/design.md).

``active_uid`` is pluggable (``HelperHub(active_uid=...)``) so the choice is
tested without logind and a site can plug in its own.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

ActiveUid = Callable[[], "int | None"]
LOGINCTL_TIMEOUT = 2.0
# What a machine service's Hello says of the screen when nobody is signed in (the
# full agent's ``machine.HelperHub.hello`` and the idle doorbell's ``doorbellseen``).
NO_SCREEN = "none"
NOBODY_SIGNED_IN = "nobody signed in"


def user_name(uid: int) -> str:
    """``uid``'s login name, or ``uid N`` for one the password database lacks."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class HelperInfo:
    conn_id: int  # increasing: a larger one connected later
    uid: int
    pid: int
    language: str = ""  # the user's, as their helper said it ("": not said)
    # What the helper's session offers for screen sharing (its HelperHello).
    screen: str = ""
    screen_problem: str = ""
    desktop: str = ""
    monitors: str = ""
    files_view_only: bool = False  # it starts sftp-server -R for a view-only files grant


def choose(helpers: Sequence[HelperInfo], active_uid: ActiveUid | None) -> HelperInfo | None:
    """The helper whose user is signed in now, or None for nobody."""
    if not helpers:
        return None
    if active_uid is None:
        return max(helpers, key=lambda h: h.conn_id)
    uid = active_uid()
    mine = [h for h in helpers if h.uid == uid]
    return max(mine, key=lambda h: h.conn_id) if mine else None


def logind_available() -> bool:
    """systemd is the init (``sd_booted``: /run/systemd/system) and loginctl is there.
    /run/systemd/seats alone is not enough: a container may have it without logind."""
    return os.path.isdir("/run/systemd/system") and shutil.which("loginctl") is not None


def _loginctl(*args: str) -> str:
    program = shutil.which("loginctl") or "loginctl"
    done = subprocess.run(  # fixed arguments; nothing from a peer reaches them
        [program, *args],
        capture_output=True,
        text=True,
        timeout=LOGINCTL_TIMEOUT,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C"},
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def logind_active_uid() -> int | None:
    """The uid of seat0's active session, or None (no active session, or logind
    did not answer)."""
    try:
        session = _loginctl("show-seat", "seat0", "--property=ActiveSession", "--value")
        if not session or not session.replace("-", "").isalnum():
            return None
        user = _loginctl("show-session", session, "--property=User", "--value")
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("logind did not say who is signed in: %s", exc)
        return None
    return int(user) if user.isdigit() else None


def default_active_uid() -> ActiveUid | None:
    """logind's answer where logind runs; None (the newest helper) elsewhere."""
    return logind_active_uid if logind_available() else None
