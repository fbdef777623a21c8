"""``allowhelp-agent``: enroll, run, session, and the user's pending/allow/deny/end/request-help.

Two ways to run: per user (``enroll``/``run`` as the desktop user, the
configuration in their home) or once per PC (``enroll --system`` and
``run --system`` as root, plus ``session`` in each graphical session).
The user's commands talk to whichever serves them: with ``--config DIR`` the
machine service of DIR when it runs, else the per-user agent of DIR; without
it, the user's own agent when they enrolled one, else the machine service.

Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allowhelp.agent.cliargs import (
    SYSTEM_CONFIG_DIR,
    config_arg,
    prompt_arg,
)
from allowhelp.agent.clienrol import cmd_enroll
from allowhelp.agent.cliparse import argparse_in_our_language
from allowhelp.agent.clirun import add_run
from allowhelp.agent.config import default_config_dir
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import N_, _
from allowhelp.runtime import run_command

PROG = "allowhelp-agent"


def cmd_session(args: argparse.Namespace) -> int:
    from allowhelp.agent.helper import run_session
    from allowhelp.agent.machinesocket import machine_socket
    from allowhelp.runtime import run_event_loop

    folder = Path(args.config) if args.config else None
    run_event_loop(run_session(machine_socket(folder), prompt=args.prompt))
    return 0


def call(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the agent that serves this user (see the module's docstring)."""
    from allowhelp.agent import localsocket
    from allowhelp.agent.machineclient import machine_call
    from allowhelp.agent.machinesocket import machine_socket

    if args.config:
        folder = Path(args.config)
        if machine_socket(folder).exists():
            return machine_call(machine_socket(folder), request)
        return localsocket.call(folder, request)
    own = default_config_dir()
    if not (own / "agent.json").exists() and machine_socket(None).exists():
        return machine_call(machine_socket(None), request)
    return localsocket.call(own, request)


def cmd_pending(args: argparse.Namespace) -> int:
    pending = call(args, {"op": "pending"})["pending"]
    if args.json:
        print(json.dumps(pending))
        return 0
    if not pending:
        print(_("no help request is waiting"))
    for item in pending:
        print(describe_pending(item))
    return 0


KIND_NAMES = {
    "shell": N_("a command shell"),
    "admin-shell": N_("an administrator (root) shell"),
    "screen": N_("your screen"),
    "files": N_("your files"),
    "files-view-only": N_("your files, view only"),
}


def describe_pending(item: dict[str, Any]) -> str:
    """One line per waiting request: the technician's words as typed (``repr``
    shows the reason's exact characters), the rest in the user's language."""
    kind = str(item.get("kind", ""))
    kind = "files-view-only" if kind == "files" and item.get("view_only") else kind
    if item.get("joins"):  # an invitation into a running session (#18)
        joined = _(
            "%(session)s  %(technician)s (%(username)s) also wants to join session %(joins)s"
            " as %(role)s  phrase: %(phrase)s  (%(seconds)s s left)"
        )
        return joined % {
            "session": item["session_id"],
            "technician": item["technician"],
            "username": item.get("username") or "-",
            "joins": item["joins"],
            "role": _("control") if item.get("mode") == "control" else _("observer"),
            "phrase": item["phrase"],
            "seconds": item["seconds_left"],
        }
    line = _(
        "%(session)s  %(technician)s asks for %(what)s: %(reason)r  phrase: %(phrase)s  "
        "(%(seconds)s s left)"
    )
    return line % {
        "session": item["session_id"],
        "technician": item["technician"],
        "what": _(KIND_NAMES[kind]) if kind in KIND_NAMES else kind,
        "reason": item["reason"],
        "phrase": item["phrase"],
        "seconds": item["seconds_left"],
    }


def cmd_decide(args: argparse.Namespace) -> int:
    request = {"op": args.command, "session_id": args.session_id}
    if args.command == "allow":
        request["view_only"] = args.view_only
    call(args, request)
    if args.command == "allow":
        print(_("session %(session)s: allowed") % {"session": args.session_id})
    else:
        print(_("session %(session)s: denied") % {"session": args.session_id})
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    ended = call(args, {"op": "end", "session_id": args.session_id})["ended"]
    if ended:
        print(_("ended: %(sessions)s") % {"sessions": ", ".join(ended)})
    else:
        print(_("no session was running"))
    return 0


ROLE_NAMES = {"owner": N_("owner"), "observer": N_("observer"), "control": N_("control")}


def describe_status(sessions: list[dict[str, Any]]) -> list[str]:
    """Who is connected to which session and how (#18): each session, then the
    people invited into it."""
    lines: list[str] = []
    owners = [s for s in sessions if not s.get("joins")]
    for session in owners:
        kind = str(session.get("kind", ""))
        lines.append(
            _("%(session)s  %(what)s")
            % {
                "session": session["session_id"],
                "what": _(KIND_NAMES[kind]) if kind in KIND_NAMES else kind,
            }
        )
        people = [session, *(s for s in sessions if s.get("joins") == session["session_id"])]
        for person in people:
            role = str(person.get("role", "owner"))
            line = _("  %(technician)s (%(username)s): %(role)s, %(state)s") % {
                "technician": person["technician"],
                "username": person.get("username") or "-",
                "role": _(ROLE_NAMES[role]) if role in ROLE_NAMES else role,
                "state": _("connected") if person.get("connected") else _("not connected yet"),
            }
            lines.append(line)
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    answer = call(args, {"op": "status"})
    if args.json:
        print(json.dumps(answer))
        return 0
    lines = describe_status(list(answer.get("sessions", [])))
    print("\n".join(lines) if lines else _("no session is running"))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """The user removes one person from a session: their invitation ends."""
    sessions = call(args, {"op": "status"}).get("sessions", [])
    found = [
        s["session_id"]
        for s in sessions
        if s.get("joins") == args.session_id and s.get("username") == args.username
    ]
    if not found:
        raise AgentError(
            _("nobody called %(username)s takes part in session %(session)s")
            % {"username": args.username, "session": args.session_id}
        )
    call(args, {"op": "end", "session_id": found[0]})
    print(
        _("%(username)s removed from session %(session)s")
        % {"username": args.username, "session": args.session_id}
    )
    return 0


def cmd_request_help(args: argparse.Namespace) -> int:
    answer = call(args, {"op": "request-help", "message": args.message})
    print(answer["code"])
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """What IT did on this PC: read from the machine folder's history, else the user's."""
    from allowhelp.agent.history import HISTORY_FILE, History, describe

    if args.config:
        folder = Path(args.config)
        if not folder.is_dir():
            raise AgentError(
                _("%(folder)s is not a folder: give the agent's --config folder")
                % {"folder": folder}
            )
    elif (SYSTEM_CONFIG_DIR / HISTORY_FILE).exists():
        folder = SYSTEM_CONFIG_DIR
    else:
        folder = default_config_dir()
    entries = History(folder / HISTORY_FILE).read()
    if args.json:
        print(json.dumps(entries))
        return 0
    if not entries:
        print(_("IT has done nothing on this PC that allowhelp knows of"))
    for entry in entries:
        print(describe(entry))
    return 0


def cmd_messages(args: argparse.Namespace) -> int:
    from allowhelp.protocol.control import MAX_CHAT
    from allowhelp.protocol.text import plain_text

    lines = call(args, {"op": "messages", "session_id": args.session_id})["messages"]
    if args.json:
        print(json.dumps([{k: m[k] for k in ("from", "text", "ts")} for m in lines]))
        return 0
    if not lines:
        print(_("no messages yet"))
    for m in lines:  # made plain by the agent: no escape reaches this terminal
        clock = time.strftime("%H:%M:%S", time.localtime(float(m["ts"])))
        print(f"[{clock}] {plain_text(m['from'], 100)}: {plain_text(m['text'], MAX_CHAT)}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    call(args, {"op": "chat", "session_id": args.session_id, "text": args.text})
    print(_("sent"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=_("allowhelp agent"))
    parser.add_argument("-v", "--verbose", action="store_true", help=_("debug logging"))
    sub = parser.add_subparsers(dest="command", required=True, metavar=_("COMMAND"))
    enroll = sub.add_parser("enroll", help=_("enrol this PC with a token from the help desk"))
    enroll.add_argument(
        "token",
        nargs="?",
        default=None,
        metavar=_("TOKEN"),
        help=_(
            "the token the help desk gave you; other users of this PC can see it while "
            "enroll runs (ps): --token-file keeps it hidden"
        ),
    )
    enroll.add_argument(
        "--token-file",
        default=None,
        metavar=_("FILE"),
        help=_("read the token from FILE instead ('-': standard input)"),
    )
    enroll.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help=_(
            "web proxy for enrolment and the tunnel, http://[user:password@]host:port, or "
            "'direct' (default: $https_proxy, honouring $no_proxy); other users of this PC "
            "can see a password given here (ps): give that proxy in $https_proxy instead"
        ),
    )
    enroll.add_argument(
        "--system",
        action="store_true",
        help=_(
            "enrol the PC once, for the machine service (root; default folder /etc/allowhelp/agent)"
        ),
    )
    config_arg(enroll)
    enroll.set_defaults(func=cmd_enroll)
    add_run(sub)
    session = sub.add_parser(
        "session", help=_("the helper in your graphical session: prompts, your shell and screen")
    )
    prompt_arg(session, "auto")
    config_arg(session)
    session.set_defaults(func=cmd_session)
    _user_commands(sub)
    return parser


def _user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """What the person at the PC types: answer, end, chat, ask for help, look back."""
    pending = sub.add_parser("pending", help=_("list the help requests waiting for your answer"))
    pending.add_argument("--json", action="store_true", help=_("print a JSON list"))
    config_arg(pending)
    pending.set_defaults(func=cmd_pending)
    allow = sub.add_parser("allow", help=_("allow a waiting help request"))
    allow.add_argument(
        "session_id", metavar=_("SESSION"), help=_("the session's id, as `pending` shows it")
    )
    allow.add_argument("--view-only", action="store_true", help=_("screen: let them watch only"))
    config_arg(allow)
    allow.set_defaults(func=cmd_decide)
    deny = sub.add_parser("deny", help=_("refuse a waiting help request"))
    deny.add_argument(
        "session_id", metavar=_("SESSION"), help=_("the session's id, as `pending` shows it")
    )
    config_arg(deny)
    deny.set_defaults(func=cmd_decide)
    end = sub.add_parser("end", help=_("end a running session (all of them without an id)"))
    end.add_argument("session_id", nargs="?", default=None, metavar=_("SESSION"))
    config_arg(end)
    end.set_defaults(func=cmd_end)
    status = sub.add_parser("status", help=_("who is connected to which session, and how"))
    status.add_argument("--json", action="store_true", help=_("print the agent's JSON answer"))
    config_arg(status)
    status.set_defaults(func=cmd_status)
    remove = sub.add_parser("remove", help=_("remove one invited person from a running session"))
    remove.add_argument("session_id", metavar=_("SESSION"))
    remove.add_argument("username", metavar=_("USERNAME"), help=_("the invited person's login"))
    config_arg(remove)
    remove.set_defaults(func=cmd_remove)
    messages = sub.add_parser("messages", help=_("show the chat of a running session"))
    messages.add_argument("session_id", metavar=_("SESSION"))
    messages.add_argument("--json", action="store_true", help=_('print [{"from", "text", "ts"}]'))
    config_arg(messages)
    messages.set_defaults(func=cmd_messages)
    chat = sub.add_parser("chat", help=_("write to the technician of a running session"))
    chat.add_argument("session_id", metavar=_("SESSION"))
    chat.add_argument("text", metavar=_("TEXT"))
    config_arg(chat)
    chat.set_defaults(func=cmd_chat)
    helpme = sub.add_parser("request-help", help=_("ask the help desk for help; prints a code"))
    helpme.add_argument("--message", default="", help=_("what the problem is"))
    config_arg(helpme)
    helpme.set_defaults(func=cmd_request_help)
    history = sub.add_parser("history", help=_("what IT did on this PC: jobs and help sessions"))
    history.add_argument("--json", action="store_true", help=_("print a JSON list"))
    config_arg(history)
    history.set_defaults(func=cmd_history)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with argparse_in_our_language():
        args = build_parser().parse_args(argv)
    args.argv = argv  # the doorbell starts the full agent with the same
    # argparse's own words for the line, so both kinds of error read alike
    line = _("%(prog)s: error: %(message)s\n")
    return run_command(PROG, args, (AgentError, ValueError, OSError), error_line=line)


if __name__ == "__main__":
    sys.exit(main())
