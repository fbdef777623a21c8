"""The consent gate: the PC user's decisions, and the only source of grants.

Plain state without I/O. The SSH server asks ``claim`` before it opens any
channel; without a live grant for that session and kind the answer is no,
whoever asks — the broker included, so a stolen broker key opens nothing.

A grant allows one channel of its kind. View-only applies to the screen.

Invitations (#18): a request that ``joins`` a running session asks about one more
person, under its own id and phrase. Its grant lets that person's channel join
the session (``participants.py``); an ``observe`` grant is view-only whatever the
user clicked, and it ends with the session it joined. It outlives its channel
(``unclaim``): a reloaded page or a dropped network lets its invitee attach
again, one channel at a time, until the invitation is revoked, removed or ends.

Owners: on a PC with a machine service, each request belongs to the user
who was signed in when it came (their uid); only that uid can see, answer or
end it (``owner`` in ``decide``, ``end`` and the listings). A per-user agent
leaves ``owner`` None: there is one user, the one it runs as.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from allowhelp.agent.i18n import N_, _, current, translations
from allowhelp.protocol.control import ConsentRequest
from allowhelp.protocol.kinds import JOINABLE, Kind, Via

Closer = Callable[[], None]


class ConsentRefused(Exception):
    """No live grant covers what was asked; the message says what was missing."""


# The whole sentence per kind: translators see who asks for what in one piece.
WHAT_IS_ASKED = {
    "shell": N_(
        "%(technician)s from %(organisation)s asks to open a command shell (terminal) on this PC."
    ),
    "screen": N_("%(technician)s from %(organisation)s asks to see your screen."),
    "files": N_(
        "%(technician)s from %(organisation)s asks to exchange files with your PC (with your"
        " rights: what you can open, they can)."
    ),
    "files-view-only": N_(
        "%(technician)s from %(organisation)s asks to see your files, view only (with your"
        " rights: what you can open, they can read and copy; they cannot change anything)."
    ),
    "admin-shell": N_(
        "%(technician)s from %(organisation)s asks for an administrator (root) shell on this"
        " PC: full control of the whole computer, every user's files included."
    ),
}
# An invitation, by what the session is and how the invitee takes part.
WHAT_IS_ASKED_TO_JOIN = {
    ("shell", "observe"): N_(
        "%(technician)s from %(organisation)s also wants to watch your terminal (they cannot type)."
    ),
    ("shell", "control"): N_(
        "%(technician)s from %(organisation)s also wants to use your terminal (they can type)."
    ),
    ("admin-shell", "observe"): N_(
        "%(technician)s from %(organisation)s also wants to watch the administrator (root)"
        " terminal open on this PC (they cannot type)."
    ),
    ("admin-shell", "control"): N_(
        "%(technician)s from %(organisation)s also wants to use the administrator (root)"
        " terminal open on this PC (they can type: full control of the whole computer)."
    ),
    ("screen", "observe"): N_(
        "%(technician)s from %(organisation)s also wants to watch your screen (they cannot"
        " control it)."
    ),
    ("screen", "control"): N_(
        "%(technician)s from %(organisation)s also wants to see and control your screen."
    ),
}
# A terminal's joiner starts with its recent output (the broker's relay/scrollback.py).
SEES_RECENT_OUTPUT = N_(
    "They will also see what the terminal showed recently (up to its last 64 KiB of output)."
)


@dataclass
class Pending:
    request: ConsentRequest
    asked_at: float
    deadline: float
    owner: int | None = None
    # The language the prompt is shown in ("": this process's user's): a machine
    # service sets the signed-in user's, so the audit holds the text they saw.
    language: str = ""

    def prompt_text(self) -> str:
        """The exact text every front-end shows, in the user's language; it goes to
        the audit record too. What the technician typed and the organisation's name
        are shown as typed."""
        t = translations(self.language) if self.language else current()
        request = self.request
        names = {"technician": request.technician, "organisation": request.organisation}
        asked = WHAT_IS_ASKED[request.kind]
        if request.kind == "files" and request.view_only:
            asked = WHAT_IS_ASKED["files-view-only"]
        kind = request.kind if request.kind in ("screen", "admin-shell") else "shell"
        if request.joins:
            asked = WHAT_IS_ASKED_TO_JOIN[(kind, request.mode or "observe")]
        lines = [t.gettext(asked) % names]
        if request.joins and kind != "screen":
            lines.append(t.gettext(SEES_RECENT_OUTPUT))
        lines += [
            t.gettext("Reason: %(reason)s") % {"reason": request.reason},
            t.gettext("Verification phrase: %(phrase)s") % {"phrase": request.phrase},
        ]
        if request.help_code:
            lines.append(
                t.gettext("You asked for help (code %(code)s).") % {"code": request.help_code}
            )
        lines.append(t.gettext("Only allow this if you are on the phone with the help desk."))
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.request.session_id,
            "technician": self.request.technician,
            "organisation": self.request.organisation,
            "kind": self.request.kind,
            "reason": self.request.reason,
            "phrase": self.request.phrase,
            "help_code": self.request.help_code,
            "seconds_left": max(0, round(self.deadline - time.monotonic())),
            "joins": self.request.joins,
            "mode": self.request.mode,
            "username": self.request.username,
            "view_only": self.request.view_only,
        }


@dataclass
class Grant:
    session_id: str
    kind: Kind
    view_only: bool
    technician: str
    owner: int | None = None
    granted_at: float = field(default_factory=time.time)
    claimed: bool = False
    monitor: str = ""  # a screen: the monitor asked for (protocol/monitors.py), "" the default
    closers: list[Closer] = field(default_factory=list)
    # An invitation's grant: the session it joins, "observe" | "control", the login.
    joins: str = ""
    mode: str = ""
    username: str = ""

    @property
    def role(self) -> str:
        """How this person takes part: owner, observer or control."""
        if not self.joins:
            return "owner"
        return "control" if self.mode == "control" else "observer"

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "view_only": self.view_only,
            "technician": self.technician,
            "since": self.granted_at,
            "joins": self.joins,
            "role": self.role,
            "username": self.username,
            "connected": self.claimed,
        }


@dataclass(frozen=True)
class Decision:
    session_id: str
    granted: bool
    view_only: bool
    via: Via
    elapsed: float
    prompt: str


class ConsentGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._grants: dict[str, Grant] = {}

    # asking and deciding

    def ask(self, request: ConsentRequest, owner: int | None = None) -> Pending:
        if request.session_id in self._pending or request.session_id in self._grants:
            raise ConsentRefused(f"session {request.session_id} was already asked")
        if request.joins:
            if request.kind not in JOINABLE:  # files: one person's SFTP, never shared
                raise ConsentRefused(f"a {request.kind} session cannot be joined")
            joined = self._grants.get(request.joins)
            if joined is None or joined.joins or joined.kind != request.kind:
                raise ConsentRefused(f"no running {request.kind} session {request.joins} to join")
            owner = joined.owner  # asked of the person whose session it is
        now = self._clock()
        pending = Pending(request, now, now + request.timeout, owner)
        self._pending[request.session_id] = pending
        return pending

    def pending(self, owner: int | None = None) -> list[Pending]:
        """The waiting requests (of ``owner`` alone, when given)."""
        self.expire()
        mine = [p for p in self._pending.values() if owner is None or p.owner == owner]
        return sorted(mine, key=lambda p: p.asked_at)

    def decide(
        self,
        session_id: str,
        *,
        allow: bool,
        view_only: bool,
        via: Via,
        owner: int | None = None,
    ) -> Decision:
        """The user's answer. With ``owner`` (a machine service: the caller's uid),
        someone else's request is refused exactly as one that does not exist."""
        self.expire()
        pending = self._pending.get(session_id)
        if pending is None or (owner is not None and pending.owner != owner):
            raise ConsentRefused(
                _("no request %(session)s is waiting (answered or expired)")
                % {"session": session_id}
            )
        del self._pending[session_id]
        request = pending.request
        view_only = (view_only or False) and request.kind == "screen"
        if request.kind == "files":  # asked view only: read-only (sftp-server -R)
            view_only = request.view_only
        if request.joins:
            if request.joins not in self._grants:  # the session ended meanwhile
                allow = False
            # An observer is view-only whatever was clicked; the user may lower control.
            view_only = view_only or request.mode != "control"
        if allow:
            self._grants[session_id] = Grant(
                session_id,
                request.kind,
                view_only,
                request.technician,
                pending.owner,
                monitor=request.monitor if request.kind == "screen" else "",
                joins=request.joins,
                mode=request.mode if request.joins else "",
                username=request.username,
            )
        return Decision(
            session_id=session_id,
            granted=allow,
            view_only=view_only,
            via=via,
            elapsed=round(self._clock() - pending.asked_at, 3),
            prompt=pending.prompt_text(),
        )

    def expire(self) -> list[str]:
        now = self._clock()
        gone = [sid for sid, p in self._pending.items() if p.deadline <= now]
        for sid in gone:
            del self._pending[sid]
        return gone

    # using grants

    def claim(self, session_id: str, kind: Kind, closer: Closer) -> Grant:
        """Bind one channel to a live grant; refuse anything not granted."""
        grant = self._grants.get(session_id)
        if grant is None:
            raise ConsentRefused(f"no consent for session {session_id}")
        if grant.kind != kind:
            raise ConsentRefused(f"session {session_id} was granted {grant.kind}, not {kind}")
        if grant.claimed:
            raise ConsentRefused(f"session {session_id} already has its {kind} channel")
        grant.claimed = True
        grant.closers.append(closer)
        return grant

    def unclaim(self, session_id: str, closer: Closer) -> None:
        """An invitation's channel closed on its own (the invitee's page reloaded,
        their network dropped): the grant stands, free for their next channel (#18)."""
        grant = self._grants.get(session_id)
        if grant is None or closer not in grant.closers:
            return
        grant.closers.remove(closer)
        grant.claimed = bool(grant.closers)

    def grants(self, owner: int | None = None) -> list[Grant]:
        return [g for g in self._grants.values() if owner is None or g.owner == owner]

    def revoke(self, session_id: str) -> bool:
        """End a grant (either side ended it) and close its channels at once."""
        return bool(self.revoke_with_members(session_id))

    def members(self, session_id: str) -> list[Grant]:
        """The invitations granted into ``session_id`` (its other participants)."""
        return [g for g in self._grants.values() if g.joins == session_id]

    def revoke_with_members(self, session_id: str) -> list[str]:
        """End a grant and the invitations that joined it (and prompts asking to);
        the ids of the grants ended, members first."""
        self._pending.pop(session_id, None)
        for waiting in [p for p in self._pending.values() if p.request.joins == session_id]:
            del self._pending[waiting.request.session_id]
        ended = [
            sid for g in self.members(session_id) for sid in self.revoke_with_members(g.session_id)
        ]
        grant = self._grants.pop(session_id, None)
        if grant is None:
            return ended
        for closer in grant.closers:
            closer()
        return [*ended, session_id]

    def revoke_all(self) -> list[str]:
        ended = list(self._grants)
        for session_id in ended:
            self.revoke(session_id)
        self._pending.clear()
        return ended
