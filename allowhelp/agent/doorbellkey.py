"""The doorbell's two files in the agent's folder: its key, and the last Hello.

``doorbell.json`` (``{"agent_id", "token"}``) is what the broker sent the full
agent (``DoorbellKey``) for the doorbell to present; ``hello.json`` is the full
agent's last Hello, which the doorbell sends so that the broker lists the PC as
it was. Both 0600, written atomically (``config.write_private``). Light: the
doorbell process (``doorbell.py``) reads them.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from allowhelp import __version__
from allowhelp.agent.config import write_private

DOORBELL_FILE = "doorbell.json"
HELLO_FILE = "hello.json"
MAX_HELLO = 12 * 1024  # the doorbell's body may be 16 KiB
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, urlsafe base64 unpadded


@dataclass(frozen=True)
class SavedKey:
    agent_id: str
    token: str = field(repr=False)


def read_key(folder: Path) -> SavedKey | None:
    """The saved key; None when there is none or it is damaged (a new one is fetched)."""
    try:
        raw = json.loads((folder / DOORBELL_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    agent_id, token = raw.get("agent_id"), raw.get("token")
    if not isinstance(agent_id, str) or not agent_id or not isinstance(token, str):
        return None
    if not TOKEN.fullmatch(token):
        return None
    return SavedKey(agent_id, token)


def save_key(folder: Path, agent_id: str, token: str) -> None:
    if not TOKEN.fullmatch(token):
        raise ValueError("the broker sent a doorbell key that is not 43 urlsafe base64 characters")
    write_private(folder / DOORBELL_FILE, json.dumps({"agent_id": agent_id, "token": token}) + "\n")


def save_hello(folder: Path, hello: dict[str, object]) -> None:
    write_private(folder / HELLO_FILE, json.dumps(hello) + "\n")


def saved_hello(folder: Path) -> dict[str, object]:
    """The full agent's last Hello, saying it has a key."""
    hello: dict[str, object] = {}
    try:
        raw = (folder / HELLO_FILE).read_bytes()
        loaded = json.loads(raw) if len(raw) <= MAX_HELLO else None
        if isinstance(loaded, dict):
            hello = loaded
    except (OSError, ValueError, RecursionError):
        pass
    if not hello:  # never saved (or damaged): what the doorbell knows itself
        hello = {"type": "hello", "hostname": socket.gethostname(), "os": "", "user": ""}
        hello["version"] = __version__
    hello["doorbell"] = "have"
    return hello


def hello_body(folder: Path, hello: dict[str, object] | None = None) -> bytes:
    """``{"hello": ...}``: ``hello``, else the full agent's last one (``saved_hello``)."""
    return json.dumps({"hello": saved_hello(folder) if hello is None else hello}).encode()
