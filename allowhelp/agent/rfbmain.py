"""The main of an engine process: RFB on its stdin and stdout, one line on failure.

The portal engine (``portalvnc``) and wlroots' all monitors (``wayvncall``) are
run by the session helper as the user on one end of a socketpair, exactly like
``x11vnc -inetd``; both end the same way: 0 when the viewer leaves or on
SIGTERM (their clean-up run), else 1 with one line on stderr saying why.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable

from allowhelp.agent.errors import AgentError


class EngineError(AgentError):
    """Why an engine cannot serve the screen; one line for the technician."""


def _stop(signum: int, frame: object) -> None:
    """The first SIGTERM ends the engine through its clean-up; later ones (the session
    helper's group, ``runuser`` passing it on) must not cut that clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


def run_engine(
    serve: Callable[[socket.socket], None], failures: tuple[type[Exception], ...], what: str
) -> int:
    """The main of an engine process (``portalvnc``, ``wayvncall``): RFB on its stdin
    and stdout (one end of a socketpair), ``serve`` given that socket.

    Exit status 0 when the viewer leaves or on SIGTERM (``serve``'s own clean-up
    has run); 1 with one line on stderr for an ``AgentError`` (``EngineError``,
    ``StreamEnded``, the portal's, wayvnc's reader's) or any of ``failures``
    (their message), or another OSError (``what``, then why)."""
    caught: tuple[type[Exception], ...] = (AgentError, *failures)
    signal.signal(signal.SIGTERM, _stop)
    viewer = socket.socket(fileno=os.dup(0))
    try:
        serve(viewer)
    except (ConnectionError, BrokenPipeError):
        return 0  # the viewer left
    except caught as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{what}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        viewer.close()
    return 0
