"""What a session is, in the words both ends use: its kinds, the SSH subsystem names
of its channels and of the control channel, its id, why it ended, how a decision was
given, and how an invitee takes part. No I/O."""

from __future__ import annotations

from typing import Literal, get_args

CONTROL_SUBSYSTEM = "allowhelp.control"
SHELL_SUBSYSTEM = "allowhelp.shell"
SCREEN_SUBSYSTEM = "allowhelp.screen"
ADMIN_SHELL_SUBSYSTEM = "allowhelp.admin-shell"
FILES_SUBSYSTEM = "allowhelp.files"  # SFTP (version 3) under a files grant

# admin-shell: a root shell; only an agent run as the machine service offers it.
# files: SFTP as the signed-in user (the agent runs sftp-server as them).
Kind = Literal["shell", "screen", "admin-shell", "files"]
KINDS: tuple[Kind, ...] = ("shell", "screen", "admin-shell", "files")
TERMINAL_KINDS: tuple[Kind, ...] = ("shell", "admin-shell")  # a PTY, recorded, replayed
# What an invitee may join (#18): files is one person's SFTP, never shared. The
# broker invites to these alone and the agent refuses a join of anything else.
JOINABLE: tuple[Kind, ...] = ("shell", "admin-shell", "screen")
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
END_REASONS: tuple[EndReason, ...] = get_args(EndReason)
# What the agent may say in ``session.end`` besides "user": why it could not ask.
AGENT_END_REASONS = ("user", "nobody_signed_in", "unsupported", "signed_out")
Via = Literal["dialog", "terminal", "cli"]
VIAS: tuple[Via, ...] = ("dialog", "terminal", "cli")
# How an invited participant takes part (#18): observe = output only; control = may type.
INVITE_MODES = ("observe", "control")

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
