"""The control channel between broker and agent: JSON lines over one SSH channel.

The broker opens it right after the tunnel comes up, as the SSH subsystem
``allowhelp.control``. Through it the broker can only *ask* (show a consent
prompt, say a session ended); nothing on it opens a shell or a screen. It
also carries fleet jobs (``job.run``), which the machine service runs only
when they are signed for that PC and its own policy file allows them
(``protocol/jobs.py``, docs/jobs.md): a separate path that grants nothing to
a session. The agent reports decisions, user-ended sessions, help requests,
job results and (the machine service) its inventory.

Everything received is hostile: every field is type-checked and bounded here
(``fields.py``), and a bad line raises ``ProtocolError`` (the receiver closes
the channel). Nothing else escapes ``decode`` (``hostile_json.parse_json``).
The words the messages use (kinds, end reasons, subsystem names) are
``kinds.py``'s; each field's bounds are ``control_limits.py``'s.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from allowhelp.protocol.control_limits import LIMITS, MAX_HIDDEN, RULES
from allowhelp.protocol.fields import Record, checked_fields
from allowhelp.protocol.hostile_json import ProtocolError, parse_json
from allowhelp.protocol.kinds import EndReason, Kind, Via
from allowhelp.protocol.nodes import AddressError, checked_nodes

MAX_LINE = 16 * 1024


@dataclass(frozen=True)
class Message(Record):
    """One control line."""

    def encode(self) -> bytes:
        return self.to_bytes() + b"\n"


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
    # A files session asked for as view only: the prompt says so and sftp-server runs
    # read-only (-R). Sent only to agents whose Hello says ``files_view_only``.
    view_only: bool = False


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
    # The agent runs a view-only files grant read-only (ConsentRequest ``view_only``).
    files_view_only: bool = False
    # The doorbell (docs/design.md "Doorbell"): "" the agent holds its SSH tunnel while
    # idle (older agents too); "need": it idles on a doorbell and has no valid key (the
    # broker answers with ``doorbell.key``); "have": it idles on a doorbell with a key.
    doorbell: str = ""
    # The agent's own folders that no files session may reach, with all they hold:
    # absolute real paths (a per-user agent's configuration folder: its host key). The
    # broker refuses a files request whose path resolves into one (``path_hidden``).
    files_hidden: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As sent (``asdict`` keeps a tuple; JSON has a list): ``hello.json`` and the
        doorbell's body take it back through ``hello_from``."""
        return {**super().to_json(), "files_hidden": list(self.files_hidden)}


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
MAX_CHAT = LIMITS["text"]


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


def _checked(cls: type[Message], raw: Mapping[str, Any]) -> dict[str, Any]:
    values = checked_fields(cls, raw, RULES)
    if cls is DoorbellKey and not values["token"]:
        raise ProtocolError("token must not be empty")
    if cls is Hello and "files_hidden" in values:
        values["files_hidden"] = checked_hidden(values["files_hidden"])
    if cls is NodesList:
        try:
            values["tunnels"], values["urls"] = checked_nodes(values)
        except AddressError as exc:
            raise ProtocolError(f"nodes.list refused: {exc}") from None
    return values


def checked_hidden(folders: list[object]) -> tuple[str, ...]:
    """A Hello's ``files_hidden``: at most ``MAX_HIDDEN`` absolute, normal paths (as
    ``os.path.realpath`` gives them: no ``..``, ``.``, ``//`` or trailing ``/``)."""
    if len(folders) > MAX_HIDDEN:
        raise ProtocolError(f"files_hidden must hold at most {MAX_HIDDEN} folders")
    limit = LIMITS["files_hidden"]
    for folder in folders:
        if not isinstance(folder, str) or not 0 < len(folder) <= limit:
            raise ProtocolError(f"files_hidden must hold paths of 1 to {limit} chars")
        normal = posixpath.normpath(folder) == folder and not folder.startswith("//")
        if not folder.startswith("/") or not normal or "\x00" in folder:
            raise ProtocolError("files_hidden must hold absolute, normal paths")
    return tuple(str(folder) for folder in folders)


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
