"""What the machine service and the per-user side say over the helper socket.

The machine service (``allowhelp-agent run --system``, root) listens on one
local ``SOCK_SEQPACKET`` socket. Two kinds of peer use it, each known to the
service by its kernel-given uid (``SO_PEERCRED``), never by anything it says:

- the session helper (``allowhelp-agent session``, one per graphical session,
  as that user) sends ``helper`` first and stays: the service pushes it the
  prompts for its user and asks it to start that user's shell or screen
  server (``open``); the helper answers ``opened`` with the file descriptor
  (a PTY master, a socket) attached as ``SCM_RIGHTS``, and ``exited`` when
  that program is gone;
- the CLI (``pending``, ``allow``, ``deny``, ``end``, ``request-help``,
  ``status``) sends one request and reads one ``answer``.

One JSON object per packet, at most ``MAX_PACKET`` bytes, nested at most
``MAX_DEPTH`` levels (checked before parsing, ``hostile_json.parse_json``); every
field is type-checked and bounded here (``fields.py``, the control channel's
rules with this socket's bounds), and anything else is a ``ProtocolError``.
Sans-I/O: no sockets in this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from allowhelp.protocol.control import MAX_CHAT
from allowhelp.protocol.fields import FieldRules, Record, checked_fields
from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.kinds import KINDS, VIAS, Kind, Via

MAX_PACKET = 16 * 1024
MAX_DEPTH = 3
_TEXT_LIMITS = {
    "term": 64,
    "error": 500,
    "message": 500,
    "organisation": 100,
    "technician": 100,
    "reason": 500,
    "phrase": 100,
    "help_code": 20,
    "prompt": 4000,
    "text": MAX_CHAT,
    "screen": 20,
    "screen_problem": 300,
    "desktop": 200,
    "monitor": 64,
    "monitors": 2000,
}


# Whole numbers: terminal sizes, exit statuses (a signal's is negative).
_RULES = FieldRules(
    texts=_TEXT_LIMITS,
    whole=(-1024, 65535),
    choices={"Kind": KINDS, "Via": VIAS},
    ids={"session_id": True},
)


@dataclass(frozen=True)
class Packet(Record):
    """One packet on the helper socket."""

    def encode(self) -> bytes:
        return self.to_bytes()


# client → service


@dataclass(frozen=True)
class HelperHello(Packet):
    """The session helper: keep this connection, send me my user's prompts.

    ``language``: the user's (two letters, from their session's locale): the
    verification phrase's words and the audited prompt's language. It also says
    what its session offers for screen sharing (``control.Hello``'s fields)."""

    type: ClassVar[str] = "helper"
    language: str = ""
    screen: str = ""
    screen_problem: str = ""
    desktop: str = ""
    monitors: str = ""  # the session's monitors (protocol/monitors.py)
    # It starts sftp-server read-only (-R) for a view-only files grant (``Open.view_only``);
    # a helper older than that says nothing (False): the service starts no view-only
    # files program on it.
    files_view_only: bool = False


@dataclass(frozen=True)
class PendingQuery(Packet):
    type: ClassVar[str] = "pending"


@dataclass(frozen=True)
class StatusQuery(Packet):
    type: ClassVar[str] = "status"


@dataclass(frozen=True)
class Allow(Packet):
    type: ClassVar[str] = "allow"
    session_id: str
    view_only: bool = False
    via: Via = "cli"


@dataclass(frozen=True)
class Deny(Packet):
    type: ClassVar[str] = "deny"
    session_id: str
    via: Via = "cli"


@dataclass(frozen=True)
class End(Packet):
    """End one running session of the caller's, or all of them (no id)."""

    type: ClassVar[str] = "end"
    session_id: str = ""


@dataclass(frozen=True)
class AskHelp(Packet):
    type: ClassVar[str] = "request-help"
    message: str = ""


@dataclass(frozen=True)
class MessagesQuery(Packet):
    """The chat of one of the caller's sessions (``allowhelp-agent messages``)."""

    type: ClassVar[str] = "messages"
    session_id: str


@dataclass(frozen=True)
class Say(Packet):
    """The caller writes to the technician of one of their sessions (``chat``)."""

    type: ClassVar[str] = "chat"
    session_id: str
    text: str


@dataclass(frozen=True)
class Opened(Packet):
    """Helper → service: the program for ``open`` runs; its fd rides along (ok only)."""

    type: ClassVar[str] = "opened"
    session_id: str
    ok: bool
    error: str = ""
    greeted: bool = False  # RFB 003.008 said to the screen server for the viewer (rfbgreeting.py)
    program: int = 0  # the ``open``'s (0: a helper older than program numbers)


@dataclass(frozen=True)
class Exited(Packet):
    """Helper → service: the program of that session is gone, with its status."""

    type: ClassVar[str] = "exited"
    session_id: str
    status: int
    error: str = ""
    program: int = 0  # the ``open``'s (0: a helper older than program numbers)


# service → helper


@dataclass(frozen=True)
class Prompt(Packet):
    """Show this consent request to the user (the fields are the gate's, made plain)."""

    type: ClassVar[str] = "prompt"
    session_id: str
    technician: str
    organisation: str
    kind: Kind
    reason: str
    phrase: str
    help_code: str
    seconds_left: int
    prompt: str
    # An invitation into a running session (#18): control.ConsentRequest's fields.
    joins: str = ""
    mode: str = ""
    username: str = ""
    # A files request asked view only (sftp-server -R): the prompt says so. An older
    # service sends nothing (False).
    view_only: bool = False


@dataclass(frozen=True)
class PromptClosed(Packet):
    type: ClassVar[str] = "prompt_closed"
    session_id: str


@dataclass(frozen=True)
class Active(Packet):
    """A session the user allowed is running: show the "session active" window."""

    type: ClassVar[str] = "active"
    session_id: str
    kind: Kind
    view_only: bool
    technician: str
    organisation: str
    # An invited participant's grant (#18): the session joined, how, who.
    joins: str = ""
    mode: str = ""
    username: str = ""


@dataclass(frozen=True)
class Ended(Packet):
    type: ClassVar[str] = "ended"
    session_id: str


@dataclass(frozen=True)
class News(Packet):
    """A chat message or file transfer in one of the user's sessions, for its window."""

    type: ClassVar[str] = "news"
    session_id: str
    kind: str  # chat | transfer
    sender: str
    text: str


@dataclass(frozen=True)
class Open(Packet):
    """Start the user's shell (on a PTY) or screen server for a granted session."""

    type: ClassVar[str] = "open"
    session_id: str
    kind: Kind
    term: str
    cols: int
    rows: int
    view_only: bool
    monitor: str = ""  # a screen: the monitor picked (protocol/monitors.py), "" the default
    # The service takes the greeting (``Opened.greeted``): the helper may say the RFB
    # version to the screen server for the viewer. An older service would pass the
    # viewer's own line on as well, so the helper greets only when asked.
    greet: bool = False
    # Which start of the session's program this is (1-65535, the service's count; 0
    # from an older service): an invitee who reconnects gets a new program under the
    # same session id while the one before may still be ending, and each report
    # (``Opened``, ``Exited``) and ``Close`` names its own.
    program: int = 0


@dataclass(frozen=True)
class Close(Packet):
    """End that session's program (and its process group) now."""

    type: ClassVar[str] = "close"
    session_id: str
    program: int = 0  # the ``open``'s


@dataclass(frozen=True)
class Notice(Packet):
    """Tell the user what IT did on this PC ("IT installed vlc on this PC at 14:02")."""

    type: ClassVar[str] = "notice"
    text: str


PACKETS: dict[str, type[Packet]] = {
    cls.type: cls
    for cls in (
        HelperHello,
        PendingQuery,
        StatusQuery,
        Allow,
        Deny,
        End,
        AskHelp,
        MessagesQuery,
        Say,
        Opened,
        Exited,
        Prompt,
        PromptClosed,
        Active,
        Ended,
        News,
        Open,
        Close,
        Notice,
    )
}
FROM_CLIENT = frozenset(
    {
        "helper",
        "pending",
        "status",
        "allow",
        "deny",
        "end",
        "request-help",
        "messages",
        "chat",
        "opened",
        "exited",
    }
)


def decode(data: bytes) -> Packet:
    """One packet to its message, or a one-line ``ProtocolError`` saying why not."""
    if len(data) > MAX_PACKET:
        raise ProtocolError(f"packet longer than {MAX_PACKET} bytes")
    raw = parse_json(data, "packet", MAX_DEPTH)
    if not isinstance(raw, dict):
        raise ProtocolError("packet is not a JSON object")
    cls = PACKETS.get(str(raw.get("type")))
    if cls is None:
        raise ProtocolError("unknown packet type")
    return cls(**checked_fields(cls, raw, _RULES))


def answer(ok: bool, **fields: object) -> bytes:
    """The service's one reply to a request (not a ``Packet``: its fields vary)."""
    return json.dumps({"type": "answer", "ok": ok, **fields}, ensure_ascii=False).encode()


def fitting(
    items: list[dict[str, object]], room: int = MAX_PACKET - 1024
) -> list[dict[str, object]]:
    """The newest ``items`` whose JSON fits in one answer packet (oldest dropped)."""
    kept: list[dict[str, object]] = []
    size = 0
    for item in reversed(items):
        size += len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if size > room:
            break
        kept.append(item)
    return kept[::-1]


def read_answer(data: bytes) -> dict[str, Any]:
    """The client's side of ``answer``: a dict with ``ok``, or ``ProtocolError``."""
    raw = parse_json(data, "answer", 4)
    if not isinstance(raw, dict) or raw.get("type") != "answer" or "ok" not in raw:
        raise ProtocolError("not an answer from the machine service")
    return raw
