"""What the PC user sees of a running session besides its window: chat and file transfers.

The broker sends ``chat.message`` (the technician wrote) and ``files.transfer``
(a file is going to or coming from this PC) for a session with a live grant;
anything for another session is dropped. The user writes back with
``allowhelp-agent chat SESSION_ID TEXT``; ``allowhelp-agent messages
SESSION_ID`` shows the conversation. All text is made plain (``plain_text``):
a technician's message cannot move the terminal's cursor or fake a line.

Kept in memory, bounded: the last ``MAX_LINES`` of each session, for the last
``MAX_SESSIONS`` sessions (the broker keeps the transcript for the record).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from allowhelp.protocol.control import MAX_CHAT, ChatMessage, FileTransfer
from allowhelp.protocol.text import plain_text

MAX_LINES = 500
MAX_SESSIONS = 20
MAX_PATH_SHOWN = 300


@dataclass(frozen=True)
class NewsLine:
    """One chat message or transfer note: ``kind`` is "chat" or "transfer"."""

    session_id: str
    kind: str
    sender: str  # the technician's name, or "you"; "" for a transfer
    text: str
    ts: float

    def to_json(self) -> dict[str, object]:
        return {"from": self.sender, "text": self.text, "ts": self.ts, "kind": self.kind}

    def line(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.ts))
        if self.kind == "transfer":
            return f"[{clock}] file: {self.text}"
        return f"[{clock}] {self.sender}: {self.text}"


Listener = Callable[[NewsLine], None]


def shown_path(path: str, limit: int = MAX_PATH_SHOWN) -> str:
    """The path made plain; a long one keeps its end (the file's name) behind "…":
    padding in front of a path cannot push what it names out of sight."""
    plain = plain_text(path, len(path))
    return plain if len(plain) <= limit else "…" + plain[-(limit - 1) :]


def transfer_text(message: FileTransfer) -> str:
    path = shown_path(message.path)
    arrow = "to this PC" if message.direction == "upload" else "from this PC"
    status = {"started": "started", "done": "done", "failed": "FAILED"}.get(message.status, "?")
    return f"{path} {arrow}, {message.size} bytes, {status}"


class SessionNews:
    def __init__(self) -> None:
        self._lines: OrderedDict[str, deque[NewsLine]] = OrderedDict()
        self.listeners: list[Listener] = []

    def add(self, line: NewsLine) -> NewsLine:
        kept = self._lines.get(line.session_id)
        if kept is None:
            kept = self._lines[line.session_id] = deque(maxlen=MAX_LINES)
            while len(self._lines) > MAX_SESSIONS:
                self._lines.popitem(last=False)
        kept.append(line)
        for listener in self.listeners:
            listener(line)
        return line

    def from_broker(self, message: ChatMessage | FileTransfer) -> NewsLine:
        if isinstance(message, ChatMessage):
            sender = plain_text(message.sender, 100) or "the technician"
            text = plain_text(message.text, MAX_CHAT)
            return self.add(NewsLine(message.session_id, "chat", sender, text, time.time()))
        text = transfer_text(message)
        return self.add(NewsLine(message.session_id, "transfer", "", text, time.time()))

    def lines(self, session_id: str) -> list[NewsLine]:
        return list(self._lines.get(session_id, ()))

    def chat(self, session_id: str) -> list[NewsLine]:
        return [line for line in self.lines(session_id) if line.kind == "chat"]
