"""The control channel between broker and agent: JSON lines over one SSH channel.

The broker opens it right after the tunnel comes up, as the SSH subsystem
``allowhelp.control``. Through it the broker can only *ask* (show a consent
prompt, say a session ended); nothing on it opens a shell or a screen. It
also carries fleet jobs (``job.run``), which the machine service runs only
when they are signed for that PC and its own policy file allows them
(``protocol/jobs.py``, docs/jobs.md): a separate path that grants nothing to
a session. The agent reports decisions, user-ended sessions, help requests,
job results and (the machine service) its inventory.

Everything received is hostile: every field is type-checked and bounded here,
and a bad line raises ``ProtocolError`` (the receiver closes the channel).
Nothing else escapes ``decode``: a line nested deeper than ``MAX_DEPTH`` is
refused before the JSON parser sees it (``[`` x 16000 would otherwise end in
a RecursionError), and every parser failure becomes a ``ProtocolError`` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from allowhelp.protocol.nodes import AddressError, checked_nodes

CONTROL_SUBSYSTEM = "allowhelp.control"
SHELL_SUBSYSTEM = "allowhelp.shell"
SCREEN_SUBSYSTEM = "allowhelp.screen"
ADMIN_SHELL_SUBSYSTEM = "allowhelp.admin-shell"
FILES_SUBSYSTEM = "allowhelp.files"  # SFTP (version 3) under a files grant
MAX_LINE = 16 * 1024
# Control messages are flat objects; a little room for fields a newer peer may
# add (unknown fields are ignored), far below anything that strains a parser.
MAX_DEPTH = 4

# admin-shell: a root shell; only an agent run as the machine service offers it.
# files: SFTP as the signed-in user (the agent runs sftp-server as them).
Kind = Literal["shell", "screen", "admin-shell", "files"]
KINDS: tuple[Kind, ...] = ("shell", "screen", "admin-shell", "files")
TERMINAL_KINDS: tuple[Kind, ...] = ("shell", "admin-shell")  # a PTY, recorded, replayed
# nobody_signed_in, unsupported: the PC could not put the request to anyone (no
# user signed in; a per-user agent asked for an admin shell), said at once.
# signed_out: the user's session helper went away (logout, crash).
EndReason = Literal[
    "technician",
    "user",
    "agent_lost",
    "broker_restart",
    "error",
    "expired",
    "shell_exited",
    "nobody_signed_in",
    "unsupported",
    "signed_out",
]
END_REASONS = (
    "technician",
    "user",
    "agent_lost",
    "broker_restart",
    "error",
    "expired",
    "shell_exited",
    "nobody_signed_in",
    "unsupported",
    "signed_out",
)
# What the agent may say in ``session.end`` besides "user": why it could not ask.
AGENT_END_REASONS = ("user", "nobody_signed_in", "unsupported", "signed_out")
Via = Literal["dialog", "terminal", "cli"]
# How an invited participant takes part (#18): observe = output only; control = may type.
INVITE_MODES = ("observe", "control")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the channel is closed on it."""


_SUBSYSTEMS: dict[Kind, str] = {
    "shell": SHELL_SUBSYSTEM,
    "screen": SCREEN_SUBSYSTEM,
    "admin-shell": ADMIN_SHELL_SUBSYSTEM,
    "files": FILES_SUBSYSTEM,
}


def channel_subsystem(kind: Kind, session_id: str) -> str:
    """The subsystem name that binds a channel to one session's grant."""
    return f"{_SUBSYSTEMS[kind]}/{session_id}"


def parse_channel_subsystem(name: str) -> tuple[Kind, str] | None:
    prefix, sep, session_id = name.partition("/")
    if not sep or not is_session_id(session_id):
        return None
    for kind, subsystem in _SUBSYSTEMS.items():
        if prefix == subsystem:
            return kind, session_id
    return None


def is_session_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 8 <= len(value) <= 40
        and all(ch.isalnum() or ch in "-_" for ch in value)
    )


def _text(value: object, name: str, limit: int, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string")
    if len(value) > limit or (not allow_empty and not value):
        raise ProtocolError(f"{name} must be {'1' if not allow_empty else '0'} to {limit} chars")
    return value


@dataclass(frozen=True)
class Message:
    type: ClassVar[str]

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False).encode() + b"\n"

    def to_json(self) -> dict[str, Any]:
        """The message as the JSON object it is sent as (``type`` first)."""
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class ConsentRequest(Message):
    """Broker → agent: show the prompt. Every string is shown as plain text."""

    type: ClassVar[str] = "consent.request"
    session_id: str
    organisation: str
    technician: str
    kind: Kind
    reason: str
    phrase: str
    timeout: float
    help_code: str = ""
    chat: bool = False  # the broker takes chat.message for this session (older ones do not)
    # A screen: the monitor to show (protocol/monitors.py): a name the agent reported,
    # "all", or "" for the engine's default. Older agents ignore it.
    monitor: str = ""
    # An invitation (#18): ``session_id`` is the invitation's own id, ``joins`` the
    # running session the invitee joins, ``mode`` "observe" | "control", ``username``
    # the invitee's login (``technician`` is their full name). "" for a new session.
    joins: str = ""
    mode: str = ""
    username: str = ""


@dataclass(frozen=True)
class ConsentDecision(Message):
    """Agent → broker: what the user decided, how, and the exact text shown."""

    type: ClassVar[str] = "consent.decision"
    session_id: str
    granted: bool
    view_only: bool
    via: Via
    elapsed: float
    prompt: str


@dataclass(frozen=True)
class SessionEnd(Message):
    """Either way: the session is over; the receiver closes its channels."""

    type: ClassVar[str] = "session.end"
    session_id: str
    reason: EndReason


@dataclass(frozen=True)
class HelpRequest(Message):
    """Agent → broker: the user asks for help; ``ref`` pairs it with the answer."""

    type: ClassVar[str] = "help.request"
    ref: str
    message: str


@dataclass(frozen=True)
class HelpCode(Message):
    """Broker → agent: the code the user reads to the help desk."""

    type: ClassVar[str] = "help.code"
    ref: str
    code: str
    expires_in: float


@dataclass(frozen=True)
class HelpRefused(Message):
    """Broker → agent: no code this time, and why (the user is told, not left waiting)."""

    type: ClassVar[str] = "help.refused"
    ref: str
    reason: str


@dataclass(frozen=True)
class Hello(Message):
    """Agent → broker, first line: what the PC is now (user may have changed).

    ``system``: the agent is the machine service (``run --system``); then
    ``user`` is who is signed in now ("" for nobody), and the agent says
    hello again whenever that changes. A per-user agent's ``user`` is the
    account it runs as."""

    type: ClassVar[str] = "hello"
    hostname: str
    os: str
    user: str
    version: str
    system: bool = False
    # The PC user's language, two letters ("fr"): the verification phrase's words
    # (the machine service says the signed-in user's). "": not said, English.
    language: str = ""
    # The agent runs signed fleet jobs (``job.run``) or answers them with a
    # refusal: only then does the broker send it any (older agents would close
    # the tunnel on an unknown message type).
    jobs: bool = False

    # What the signed-in session offers for screen sharing (agent/desktop.py):
    # ``screen`` is x11 | wlroots | portal | none ("" from an older agent: unknown);
    # ``screen_problem`` says why not when none; ``desktop`` what the agent saw.
    screen: str = ""
    screen_problem: str = ""
    desktop: str = ""

    chat: bool = False  # the agent takes ``chat.message`` (older agents would close the tunnel)
    # The session's monitors (protocol/monitors.py's line: "HDMI-1 1920x1080+0+0 primary;...");
    # "": none reported (an older agent, no graphical session, or the portal's dialog picks).
    monitors: str = ""
    # The agent understands invitations (ConsentRequest ``joins``): several participants
    # on one session (#18). An older agent would take an invitation for a new session.
    invites: bool = False
    # The agent takes ``nodes.list`` (the other broker nodes, to fail over to); an older
    # agent would close the tunnel on it, so only these get one.
    nodes: bool = False
    # The agent shows every monitor at once (screen ``monitor: all``, #15); an older one
    # would refuse it only after the PC user's click, so the broker refuses it first.
    all_monitors: bool = False
    # The doorbell (docs/design.md "Doorbell"): "" the agent holds its SSH tunnel while
    # idle (older agents too); "need": it idles on a doorbell and has no valid key (the
    # broker answers with ``doorbell.key``); "have": it idles on a doorbell with a key.
    doorbell: str = ""


DOORBELL_STATES = ("", "need", "have")


@dataclass(frozen=True)
class JobRun(Message):
    """Broker → agent: run one signed fleet job (``protocol/jobs.py``), if this PC's
    own policy allows it. ``payload`` is base64 of the job's canonical JSON."""

    type: ClassVar[str] = "job.run"
    job_id: str
    payload: str
    signature: str


@dataclass(frozen=True)
class JobResult(Message):
    """Agent → broker: how a job ended on this PC (or why it was not run).
    ``output``: the end of what it printed; ``exit_code`` -1 when none."""

    type: ClassVar[str] = "job.result"
    job_id: str
    state: str
    exit_code: int
    output: str
    started: float
    finished: float


@dataclass(frozen=True)
class InventoryReport(Message):
    """Machine service → broker, after each ``hello``: what the PC is (to prepare a
    newcomer's PC, to wipe a leaver's). The installed packages ("name version"
    lines) come in ``parts`` messages, ``part`` 0 first; the other fields are
    repeated in each."""

    type: ClassVar[str] = "inventory"
    os: str
    kernel: str
    disk_total: float  # bytes, of /
    disk_free: float
    memory_total: float  # bytes
    last_boot: float  # epoch seconds
    package_count: int
    packages: str
    part: int
    parts: int


@dataclass(frozen=True)
class ChatMessage(Message):
    """Either way, in a session: one chat line. Broker → agent: ``sender`` is the
    technician's name; agent → broker: ``sender`` is ignored (the broker names the
    PC user itself). Shown as plain text on both sides."""

    type: ClassVar[str] = "chat.message"
    session_id: str
    text: str
    sender: str = ""


@dataclass(frozen=True)
class FileTransfer(Message):
    """Broker → agent: a file transfer in a files session, for the session window."""

    type: ClassVar[str] = "files.transfer"
    session_id: str
    path: str
    direction: str  # "upload" (to the PC) | "download" (from the PC)
    size: int
    status: str  # "started" | "done" | "failed"


@dataclass(frozen=True)
class NodesList(Message):
    """Broker → agent whose Hello says ``nodes``: where every live broker node takes
    agents (docs/multinode.md), after the hello and whenever that changes.
    ``tunnels``: raw SSH ports, "host:port"; ``urls``: the same SSH on each node's
    HTTPS port (wss://...). The agent checks each node exactly as its own broker
    (the nodes share one PKI): an address grants nothing by itself."""

    type: ClassVar[str] = "nodes.list"
    tunnels: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class DoorbellKey(Message):
    """Broker → agent, right after a Hello whose ``doorbell`` is "need" (only then: an
    older agent would close the tunnel on it): the key its doorbell presents
    (``POST /api/v1/agent/doorbell``). The broker keeps only its sha256; a new key
    replaces the old one."""

    type: ClassVar[str] = "doorbell.key"
    token: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (
        ConsentRequest,
        ConsentDecision,
        SessionEnd,
        HelpRequest,
        HelpCode,
        HelpRefused,
        Hello,
        JobRun,
        JobResult,
        InventoryReport,
        ChatMessage,
        FileTransfer,
        NodesList,
        DoorbellKey,
    )
}
LIMITS = {
    "session_id": 40,
    "organisation": 100,
    "technician": 100,
    "reason": 500,
    "phrase": 100,
    "help_code": 20,
    "prompt": 4000,
    "ref": 40,
    "message": 500,
    "code": 20,
    "hostname": 253,
    "language": 16,
    "os": 200,
    "user": 64,
    "version": 32,
    "job_id": 40,
    "payload": 15000,
    "signature": 100,
    "state": 20,
    "output": 8000,
    "kernel": 200,
    "packages": 12000,
    "screen": 20,
    "screen_problem": 300,
    "desktop": 200,
    "monitor": 64,
    "monitors": 2000,
    "text": 2000,
    "sender": 100,
    "path": 1000,
    "direction": 10,
    "status": 10,
    "joins": 40,
    "mode": 10,
    "username": 64,
    "token": 64,
}


# Numbers are durations (below 1e6 s) except these points in time (epoch seconds).
_FLOAT_TOPS = {
    "started": 1e11,
    "finished": 1e11,
    "last_boot": 1e11,
    "disk_total": 1e17,
    "disk_free": 1e17,
    "memory_total": 1e17,
}
# Whole numbers are small (exit codes, counts, terminal sizes: -1 to 2**31) except these.
_INT_TOPS = {"size": 2**63}  # a file's bytes (files.transfer)
MAX_CHAT = LIMITS["text"]


# What the nesting scan looks at: brackets, and what starts, escapes or ends a string.
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = b"[{", b"]}", ord('"'), ord("\\")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text opens more than ``limit`` arrays or objects inside each other.

    One pass over the structural characters only, stopping at the first level
    too many; brackets inside strings do not count. Text that is not JSON at
    all may pass: the parser refuses it next.
    """
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(data):
        pos = match.start()
        if pos == escaped_at:
            continue
        char = data[pos]
        if in_string:
            if char == _BACKSLASH:
                escaped_at = pos + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSE:
            depth -= 1
    return False


def parse_json(data: bytes, what: str, limit: int = MAX_DEPTH) -> object:
    """Hostile JSON text to a value, or a one-line ``ProtocolError`` saying why not.

    Shared by every reader of hostile JSON lines (the control channel at both
    ends, the agent's local control socket), so none has its own way to fail.
    """
    try:
        text = data.decode("utf-8")  # strict: then no byte of a character looks like a bracket
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
    if too_deep(data, limit):
        raise ProtocolError(f"{what} is nested too deeply (more than {limit} levels)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, the int digit limit
        raise ProtocolError(f"{what} is not JSON") from exc


def decode(line: bytes) -> Message:
    if len(line) > MAX_LINE:
        raise ProtocolError("control line too long")
    raw = parse_json(line, "control line")
    if not isinstance(raw, dict):
        raise ProtocolError("control line is not a JSON object")
    cls = MESSAGE_TYPES.get(str(raw.get("type")))
    if cls is None:
        raise ProtocolError("unknown control message type")
    return cls(**_checked(cls, raw))


def hello_from(raw: object) -> Hello:
    """A Hello from a JSON object that already went through ``parse_json`` (the
    doorbell's body carries one as ``hello.json`` keeps it); ``type`` may be left out."""
    if not isinstance(raw, dict):
        raise ProtocolError("hello is not a JSON object")
    if raw.get("type", Hello.type) != Hello.type:
        raise ProtocolError("hello has another message type")
    return Hello(**_checked(Hello, raw))


def checked_fields(
    cls: type[object], raw: Mapping[str, Any], check: Callable[[str, str, object], object]
) -> dict[str, Any]:
    """The dataclass ``cls``'s fields from ``raw``, each through ``check(name,
    annotation, value)``; a missing field without a default is a ``ProtocolError``.
    Shared by the control channel and the helper socket (``helper.py``), whose
    value rules differ."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            if f.default is not MISSING:
                continue
            raise ProtocolError(f"{f.name} is missing")
        values[f.name] = check(f.name, str(f.type), raw[f.name])
    return values


def _checked(cls: type[Message], raw: Mapping[str, Any]) -> dict[str, Any]:
    values = checked_fields(cls, raw, _field)
    if "session_id" in values and not is_session_id(values["session_id"]):
        raise ProtocolError("session_id is malformed")
    if "job_id" in values and not is_session_id(values["job_id"]):
        raise ProtocolError("job_id is malformed")
    if values.get("joins") and not is_session_id(values["joins"]):
        raise ProtocolError("joins is malformed")
    if values.get("mode") not in (None, "", *INVITE_MODES):
        raise ProtocolError("mode has an unknown value")
    if values.get("doorbell") not in (None, *DOORBELL_STATES):
        raise ProtocolError("doorbell has an unknown value")
    if cls is DoorbellKey and not values["token"]:
        raise ProtocolError("token must not be empty")
    if cls is NodesList:
        try:
            values["tunnels"], values["urls"] = checked_nodes(values)
        except AddressError as exc:
            raise ProtocolError(f"nodes.list refused: {exc}") from None
    return values


def _field(name: str, annotation: str, value: object) -> object:
    """Check one value against its annotation, which is a string here because of
    ``from __future__ import annotations``; the messages use only these few types."""
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(f"{name} must be true or false")
        return value
    if annotation == "int":
        top = _INT_TOPS.get(name, 2**31)
        if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < top:
            raise ProtocolError(f"{name} must be a whole number from -1 to {top}")
        return value
    if annotation == "tuple[str, ...]":  # checked whole in _checked (nodes.list)
        if not isinstance(value, list):
            raise ProtocolError(f"{name} must be a list")
        return value
    if annotation == "float":
        ftop = _FLOAT_TOPS.get(name, 1e6)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < ftop:
            raise ProtocolError(f"{name} must be a number from 0 to {ftop:g}")
        return float(value)
    text = _text(value, name, LIMITS.get(name, 100))
    choices = {
        "Kind": KINDS,
        "Via": ("dialog", "terminal", "cli"),
        "EndReason": END_REASONS,
    }
    if annotation in choices and text not in choices[annotation]:
        raise ProtocolError(f"{name} has an unknown value")
    return text


class LineBuffer:
    """Split a byte stream into lines, refusing any line longer than MAX_LINE."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while (end := self._buf.find(b"\n")) >= 0:
            lines.append(bytes(self._buf[:end]))
            del self._buf[: end + 1]
        if len(self._buf) > MAX_LINE:
            raise ProtocolError("control line too long")
        return lines
