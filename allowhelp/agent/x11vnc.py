"""x11vnc, the screen server of an X11 session: how the agent starts it, and what its
last words mean when it stops.

x11vnc gets one end of a UNIX socketpair as its stdin and stdout and speaks
RFB on it (``screenlaunch.PairLaunch``); the agent bridges the other end to the
SSH channel. Nothing listens: no TCP port, not even on localhost, and no UNIX
socket path either.

The x11vnc options, and why:
    -norc              ignore ~/.x11vncrc: a user file must not add -forever or a port
    -inetd             RFB on stdio; x11vnc opens no listening socket
    -display D         the display the agent was started on, never a guess
    -once              exit when the viewer goes (the default; said out loud)
    -nopw              no "running without a password" banner: the SSH tunnel
                       and the consent gate are the access control
    -safer -nocmds     no remote control through the X11VNC_REMOTE property (any
                       X client could otherwise turn view-only off) and no
                       external commands at all
    -noipv6 -nolookup  no sockets to resolve or listen on
    -nonc              no client-side pixel cache: the viewer sees the true size
    -noxdamage         poll the screen: DAMAGE misses updates under compositors
                       (a screen that looks frozen is worse than some CPU)
    -nonap             no naps between polls: with them x11vnc's first update
                       came 0.7 s after the viewer's request, without 0.17 s
                       (docs/benchmarks.md, peers); an idle screen costs about
                       1 % of a core more while the session lasts
    -noprimary -nosetprimary
                       only the CLIPBOARD travels (what the user copied), not
                       every text they happen to highlight
    -viewonly -nosel   a view-only grant: no input, no clipboard either way
                       (the broker also drops input, so neither alone is trusted)
    -clip WxH+X+Y      the one monitor the technician picked (its place as
                       ``xrandr --listmonitors`` says it now; agent/monitors.py)
And one thing that is not an option: the agent writes the viewer's version line
(``RFB 003.008``, the only one the broker lets through) into x11vnc's socket as
it starts it, so x11vnc does not wait 100 ms to see whether a WebSocket opens the
connection (libvncserver does, on every connection); the viewer's own line is
checked and dropped on its way (``rfbgreeting.py``). x11vnc from its start to
its version line: 0.15 s before, 0.05 s after; the click to the first picture
0.17 s before, 0.06 s after (``bench/firstpicture.py``, docs/benchmarks.md §7d).
Not used: ``-q`` (with -inetd it closes stderr, and stderr is where x11vnc
says why it failed), ``-noshm`` (the X server is local: shared memory is fine).
"""

from __future__ import annotations

from allowhelp.protocol.text import plain_text

X11VNC = "x11vnc"


def x11vnc_argv(program: str, display: str, *, view_only: bool, clip: str = "") -> list[str]:
    argv = [program, "-norc", "-inetd", "-display", display, "-once", "-nopw", "-safer"]
    argv += ["-nocmds", "-noipv6", "-nolookup", "-nonc", "-noxdamage", "-nonap"]
    argv += ["-noprimary", "-nosetprimary"]
    if view_only:
        argv += ["-viewonly", "-nosel"]
    if clip:
        argv += ["-clip", clip]
    return argv


def explain_exit(status: int, stderr: bytes) -> str:
    """x11vnc's failure in one line: its own words when we know them."""
    lines = [plain_text(line, 300) for line in stderr.decode("utf-8", "replace").splitlines()]
    for line in lines:
        if "XOpenDisplay(" in line and "failed" in line:
            display = line[line.index("XOpenDisplay(") :].split(")")[0] + ")"
            return f"x11vnc cannot open the X display ({display} failed): no access to the screen"
    how = f"signal {-status}" if status < 0 else f"status {status}"
    last = next((_untimed(line) for line in reversed(lines) if _untimed(line)), "")
    return f"the screen sharer stopped ({how})" + (f": {last}" if last else "")


def _untimed(line: str) -> str:
    """Drop x11vnc's ``28/11/2026 12:25:58`` prefix."""
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[0].count("/") == 2 and parts[1].count(":") == 2:
        return parts[2].strip()
    return line.strip()
