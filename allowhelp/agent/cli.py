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
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allowhelp.agent.config import default_config_dir
from allowhelp.agent.errors import AgentError
from allowhelp.protocol.control import MAX_CHAT
from allowhelp.protocol.text import plain_text
from allowhelp.runtime import run_command

PROG = "allowhelp-agent"


SYSTEM_CONFIG_DIR = Path("/etc/allowhelp/agent")


def config_dir(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return SYSTEM_CONFIG_DIR if getattr(args, "system", False) else default_config_dir()


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise AgentError(f"{what} runs as root (the machine service): use sudo")


def cmd_enroll(args: argparse.Namespace) -> int:
    from allowhelp.agent.enrol import enrol

    if args.system:
        _need_root("enroll --system")
    config = enrol(args.token, config_dir(args), args.proxy or "", system=args.system)
    print(f"enrolled: this PC is agent {config.agent_id} of {config.broker_url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from allowhelp.agent.runner import run_agent, run_machine
    from allowhelp.runtime import run_event_loop, tune_malloc

    if args.system:
        _need_root("run --system")
        if args.prompt is not None:
            raise AgentError("run --system shows no prompts: `allowhelp-agent session` does")
        tune_malloc()
        run_event_loop(run_machine(config_dir(args), reconnect_cap=args.reconnect_cap))
        return 0
    tune_malloc()
    run_event_loop(
        run_agent(config_dir(args), reconnect_cap=args.reconnect_cap, prompt=args.prompt or "auto")
    )
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    from allowhelp.agent.helper import run_session
    from allowhelp.agent.machine import machine_socket
    from allowhelp.runtime import run_event_loop

    folder = Path(args.config) if args.config else None
    run_event_loop(run_session(machine_socket(folder), prompt=args.prompt))
    return 0


def call(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the agent that serves this user (see the module's docstring)."""
    from allowhelp.agent import localsocket
    from allowhelp.agent.machine import machine_socket
    from allowhelp.agent.machineclient import machine_call

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
        print("no help request is waiting")
    for item in pending:
        print(
            f"{item['session_id']}  {item['technician']} asks for {item['kind']}: "
            f"{item['reason']!r}  phrase: {item['phrase']}  ({item['seconds_left']} s left)"
        )
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    request = {"op": args.command, "session_id": args.session_id}
    if args.command == "allow":
        request["view_only"] = args.view_only
    call(args, request)
    print(f"session {args.session_id}: {'allowed' if args.command == 'allow' else 'denied'}")
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    ended = call(args, {"op": "end", "session_id": args.session_id})["ended"]
    print("ended: " + ", ".join(ended) if ended else "no session was running")
    return 0


def cmd_request_help(args: argparse.Namespace) -> int:
    answer = call(args, {"op": "request-help", "message": args.message})
    print(answer["code"])
    return 0


def cmd_messages(args: argparse.Namespace) -> int:
    lines = call(args, {"op": "messages", "session_id": args.session_id})["messages"]
    if args.json:
        print(json.dumps([{k: m[k] for k in ("from", "text", "ts")} for m in lines]))
        return 0
    if not lines:
        print("no messages yet")
    for m in lines:  # made plain by the agent: no escape reaches this terminal
        clock = time.strftime("%H:%M:%S", time.localtime(float(m["ts"])))
        print(f"[{clock}] {plain_text(m['from'], 100)}: {plain_text(m['text'], MAX_CHAT)}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    call(args, {"op": "chat", "session_id": args.session_id, "text": args.text})
    print("sent")
    return 0


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="configuration folder (default: $ALLOWHELP_CONFIG or ~/.config/allowhelp/agent)",
    )


def _prompt_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--prompt",
        choices=("auto", "dialog", "terminal", "none"),
        default=default,
        help="how to ask you: a desktop dialog, this terminal, or neither (only "
        "`allowhelp-agent allow`); auto picks what this session has (default auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="allowhelp agent")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    enroll = sub.add_parser("enroll", help="enrol this PC with a token from the help desk")
    enroll.add_argument("token")
    enroll.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="web proxy for enrolment and the tunnel, http://[user:password@]host:port, or "
        "'direct' (default: $https_proxy, honouring $no_proxy)",
    )
    enroll.add_argument(
        "--system",
        action="store_true",
        help="enrol the PC once, for the machine service (root; default folder "
        "/etc/allowhelp/agent)",
    )
    _config_arg(enroll)
    enroll.set_defaults(func=cmd_enroll)
    run = sub.add_parser("run", help="dial the broker and wait for help requests")
    run.add_argument(
        "--system",
        action="store_true",
        help="run as the machine service (root): every signed-in user's sessions go "
        "through it; `allowhelp-agent session` shows the prompts",
    )
    _config_arg(run)
    run.add_argument(
        "--reconnect-cap",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between two attempts to reach the broker (default 30)",
    )
    _prompt_arg(run, None)
    run.set_defaults(func=cmd_run)
    session = sub.add_parser(
        "session", help="the helper in your graphical session: prompts, your shell and screen"
    )
    _prompt_arg(session, "auto")
    _config_arg(session)
    session.set_defaults(func=cmd_session)

    pending = sub.add_parser("pending", help="list the help requests waiting for your answer")
    pending.add_argument("--json", action="store_true", help="print a JSON list")
    _config_arg(pending)
    pending.set_defaults(func=cmd_pending)
    allow = sub.add_parser("allow", help="allow a waiting help request")
    allow.add_argument("session_id")
    allow.add_argument("--view-only", action="store_true", help="screen: let them watch only")
    _config_arg(allow)
    allow.set_defaults(func=cmd_decide)
    deny = sub.add_parser("deny", help="refuse a waiting help request")
    deny.add_argument("session_id")
    _config_arg(deny)
    deny.set_defaults(func=cmd_decide)
    end = sub.add_parser("end", help="end a running session (all of them without an id)")
    end.add_argument("session_id", nargs="?", default=None)
    _config_arg(end)
    end.set_defaults(func=cmd_end)
    messages = sub.add_parser("messages", help="show the chat of a running session")
    messages.add_argument("session_id")
    messages.add_argument("--json", action="store_true", help='print [{"from", "text", "ts"}]')
    _config_arg(messages)
    messages.set_defaults(func=cmd_messages)
    chat = sub.add_parser("chat", help="write to the technician of a running session")
    chat.add_argument("session_id")
    chat.add_argument("text")
    _config_arg(chat)
    chat.set_defaults(func=cmd_chat)
    helpme = sub.add_parser("request-help", help="ask the help desk for help; prints a code")
    helpme.add_argument("--message", default="", help="what the problem is")
    _config_arg(helpme)
    helpme.set_defaults(func=cmd_request_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, args, (AgentError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
