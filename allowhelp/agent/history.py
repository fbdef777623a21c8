"""What IT did on this PC, for the people who use it: ``allowhelp-agent history``.

One JSON line per event in ``DIR/history.jsonl``: fleet jobs (what, why, who
asked, how it ended; never their output, which may hold secrets) and help
sessions (who, which kind, when they began and ended). Root writes it; it is
readable by every user of the PC (0644 in a folder they may pass through but
not list) because they have a right to know. Bounded: the last
``MAX_ENTRIES`` events are kept, rewritten atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from allowhelp.agent.consent import Grant, Pending
from allowhelp.protocol.text import plain_text

HISTORY_FILE = "history.jsonl"
MAX_ENTRIES = 1000
MAX_READ = 4 * 1024 * 1024


@dataclass
class History:
    path: Path

    def add(self, entry: dict[str, object]) -> None:
        entries = self.read()[-(MAX_ENTRIES - 1) :]
        entries.append({"time": time.time(), **entry})
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self) -> list[dict[str, object]]:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_READ)
        except FileNotFoundError:
            return []
        entries = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                entries.append(value)
        return entries


class SessionHistory:
    """A consent front-end that shows nothing and writes each help session down."""

    def __init__(self, history: History) -> None:
        self._history = history
        self._grants: dict[str, Grant] = {}

    def prompt(self, pending: Pending) -> None:
        return None

    def prompt_closed(self, session_id: str) -> None:
        return None

    def active(self, grant: Grant) -> None:
        self._grants[grant.session_id] = grant
        self._write(grant, "began")

    def ended(self, session_id: str) -> None:
        grant = self._grants.pop(session_id, None)
        if grant is not None:
            self._write(grant, "ended")

    def _write(self, grant: Grant, state: str) -> None:
        try:
            self._history.add(
                {
                    "what": "session",
                    "id": grant.session_id,
                    "kind": grant.kind,
                    "by": grant.technician,
                    "view_only": grant.view_only,
                    "state": state,
                }
            )
        except OSError:
            return  # the history is for the user's information; never stops a session


def describe(entry: dict[str, object]) -> str:
    """One line of ``history`` for a person."""
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(str(entry.get("time", 0)))))
    except (ValueError, OverflowError):
        when = "????-??-?? ??:??"
    by = plain_text(entry.get("by", "?"), 100)  # the broker's words: no escapes reach a terminal
    if entry.get("what") == "job":
        state = plain_text(entry.get("state", ""), 20)
        reason = plain_text(entry.get("reason", ""), 500)
        summary = plain_text(entry.get("summary", "ran a job"), 2000)
        line = f"{when}  IT ({by}) {summary}: {state}"
        return line + (f" — {reason}" if reason else "")
    kind = plain_text(entry.get("kind", "session"), 20)
    verb = "began" if entry.get("state") == "began" else "ended"
    return f"{when}  {by}'s {kind} session {verb}"
