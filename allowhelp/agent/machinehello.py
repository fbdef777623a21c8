"""What the machine service (``run --system``) says of itself when its tunnel opens.

The per-user agent's ``Hello`` is ``hello.py``'s; the machine service's names who
is signed in now, in their language, and what their session helper said of the
screen (``sessionhelpers.ScreenSaid``). The hub (``machine.py``) says it again
whenever any of that changes.
"""

from __future__ import annotations

from allowhelp import __version__
from allowhelp.agent.sessionhelpers import ScreenSaid
from allowhelp.agent.signedin import NO_SCREEN, NOBODY_SIGNED_IN
from allowhelp.protocol.control import Hello

# Who is signed in, their language, and what their helper said of the screen.
Said = tuple[str, str, ScreenSaid | None]


def machine_hello(hostname: str, os_name: str, said: Said) -> Hello:
    user, language, screen = said
    return Hello(
        hostname=hostname,
        os=os_name,
        user=user,
        version=__version__,
        system=True,
        language=language,
        jobs=True,
        screen=screen[0] if screen else NO_SCREEN,
        screen_problem=screen[1] if screen else NOBODY_SIGNED_IN,
        desktop=screen[2] if screen else "",
        chat=True,
        monitors=screen[3] if screen else "",
        invites=True,
        all_monitors=True,
        nodes=True,
        files_view_only=bool(screen and screen[4]),  # the user's helper runs one -R
    )
