"""Who is signed in, as the idle machine service's doorbell sees it (standard library only).

The doorbell parks the session helpers (``doorbellpark.py``) while no full agent
runs; their uids and hellos say who is signed in just as the full agent would
say it (``machine.HelperHub.hello``: the same choice, ``signedin.choose``, and
the same fields). The doorbell puts these fields in the Hello it sends, so the
broker's list shows a login or a logout while the PC idles, without a wake.
"""

from __future__ import annotations

from collections.abc import Iterable

from allowhelp.agent.doorbellpark import ParkedHelper
from allowhelp.agent.i18n import LANGUAGES
from allowhelp.agent.signedin import (
    NO_SCREEN,
    NOBODY_SIGNED_IN,
    ActiveUid,
    HelperInfo,
    choose,
    default_active_uid,
    user_name,
)

# The Hello's fields that follow who is signed in (machine.HelperHub.hello).
SIGNED_IN_FIELDS = ("user", "language", "screen", "screen_problem", "desktop", "monitors")


class SignedIn:
    """The signed-in fields of a machine service's Hello, from its parked helpers."""

    def __init__(self, active_uid: ActiveUid | None = None, *, probe: bool = True) -> None:
        self._active_uid = default_active_uid() if probe and active_uid is None else active_uid

    def fields(self, helpers: Iterable[ParkedHelper]) -> dict[str, str]:
        infos = [
            HelperInfo(
                h.order,
                h.uid,
                0,
                language=h.said.get("language", ""),
                screen=h.said.get("screen", ""),
                screen_problem=h.said.get("screen_problem", ""),
                desktop=h.said.get("desktop", ""),
                monitors=h.said.get("monitors", ""),
            )
            for h in helpers
        ]
        chosen = choose(infos, self._active_uid)
        if chosen is None:
            return {
                "user": "",
                "language": "",
                "screen": NO_SCREEN,
                "screen_problem": NOBODY_SIGNED_IN,
                "desktop": "",
                "monitors": "",
            }
        return {
            "user": user_name(chosen.uid),
            "language": chosen.language if chosen.language in LANGUAGES else "",
            "screen": chosen.screen,
            "screen_problem": chosen.screen_problem,
            "desktop": chosen.desktop,
            "monitors": chosen.monitors,
        }
