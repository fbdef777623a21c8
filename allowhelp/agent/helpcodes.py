"""Who asked for each help code on this PC, so that the prompt's "You asked for
help (code X)" is said only to the user who asked.

The broker's consent request carries the help code alone. On a shared PC (the
machine service) the user signed in when the technician calls may not be the one
who asked, so the line is shown only when this PC knows the code as that user's;
a code it does not know (deny by default) is not shown to anyone. The codes are
kept in the machine service's folder (``help-codes.json``, root's alone), so an
agent restarted since, or the doorbell's next full agent, still knows them. A
per-user agent has one user: there a code it does not know is shown as before,
and only one it knows as another's (none) would be hidden.

The file is small and bounded (``MAX_KEPT`` codes, each until it expires, at most
``KEEP``); a damaged or unreadable file is read as empty, so lines go unshown,
never misattributed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from allowhelp.agent.config import write_private

log = logging.getLogger(__name__)

HELP_CODES_FILE = "help-codes.json"
MAX_KEPT = 100
KEEP = 24 * 3600.0  # seconds a code is kept at most (the broker's expire sooner)


@dataclass(frozen=True)
class Asked:
    owner: int | None  # the uid that asked; None: a per-user agent's one user
    until: float  # wall clock: the code's expiry


class AskedHelp:
    def __init__(self, folder: Path | None = None) -> None:
        self._path = folder / HELP_CODES_FILE if folder is not None else None
        self._codes: dict[str, Asked] | None = None if self._path else {}

    def remember(self, code: str, owner: int | None, expires_in: float) -> None:
        codes = self._current()
        codes.pop(code, None)
        codes[code] = Asked(owner, time.time() + max(0.0, min(expires_in, KEEP)))
        while len(codes) > MAX_KEPT:  # the oldest go first
            del codes[next(iter(codes))]
        self._save(codes)

    def said_to(self, code: str, owner: int | None, *, shared: bool) -> bool:
        """Whether "You asked for help (code ``code``)" may be said to ``owner``:
        the code is theirs, or (``shared`` False, one user) not known as another's."""
        asked = self._current().get(code)
        if asked is None:
            return not shared
        return asked.owner == owner

    def _current(self) -> dict[str, Asked]:
        if self._codes is None:
            self._codes = self._load()
        now = time.time()
        for code in [c for c, asked in self._codes.items() if asked.until <= now]:
            del self._codes[code]
        return self._codes

    def _load(self) -> dict[str, Asked]:
        if self._path is None:
            return {}
        try:
            rows = json.loads(self._path.read_text(encoding="utf-8"))["codes"]
            return {
                str(row["code"]): Asked(_owner(row["owner"]), float(row["until"]))
                for row in rows[-MAX_KEPT:]
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s is unusable (%s): earlier help codes go unshown", self._path, exc)
            return {}

    def _save(self, codes: dict[str, Asked]) -> None:
        if self._path is None:
            return
        rows = [{"code": c, "owner": a.owner, "until": a.until} for c, a in codes.items()]
        try:
            write_private(self._path, json.dumps({"codes": rows}))
        except OSError as exc:  # kept in memory: this process still knows
            log.warning("cannot keep help codes in %s: %s", self._path, exc)


def _owner(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"an owner that is not a uid: {value!r}")
