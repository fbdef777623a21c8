"""``allowhelp-agent``: enroll, run.

Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from allowhelp.agent.config import default_config_dir
from allowhelp.agent.errors import AgentError
from allowhelp.runtime import run_command

PROG = "allowhelp-agent"


def config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else default_config_dir()


def cmd_enroll(args: argparse.Namespace) -> int:
    from allowhelp.agent.enrol import enrol

    config = enrol(args.token, config_dir(args), args.proxy or "")
    print(f"enrolled: this PC is agent {config.agent_id} of {config.broker_url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from allowhelp.agent.runner import run_agent
    from allowhelp.runtime import run_event_loop, tune_malloc

    tune_malloc()
    run_event_loop(
        run_agent(config_dir(args), reconnect_cap=args.reconnect_cap, prompt=args.prompt)
    )
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    from allowhelp.agent.localsocket import call

    pending = call(config_dir(args), {"op": "pending"})["pending"]
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
    from allowhelp.agent.localsocket import call

    request = {"op": args.command, "session_id": args.session_id}
    if args.command == "allow":
        request["view_only"] = args.view_only
    call(config_dir(args), request)
    print(f"session {args.session_id}: {'allowed' if args.command == 'allow' else 'denied'}")
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    from allowhelp.agent.localsocket import call

    ended = call(config_dir(args), {"op": "end", "session_id": args.session_id})["ended"]
    print("ended: " + ", ".join(ended) if ended else "no session was running")
    return 0


def cmd_request_help(args: argparse.Namespace) -> int:
    from allowhelp.agent.localsocket import call

    answer = call(config_dir(args), {"op": "request-help", "message": args.message})
    print(answer["code"])
    return 0


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="configuration folder (default: $ALLOWHELP_CONFIG or ~/.config/allowhelp/agent)",
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
    _config_arg(enroll)
    enroll.set_defaults(func=cmd_enroll)
    run = sub.add_parser("run", help="dial the broker and wait for help requests")
    _config_arg(run)
    run.add_argument(
        "--reconnect-cap",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between two attempts to reach the broker (default 30)",
    )
    run.add_argument(
        "--prompt",
        choices=("auto", "dialog", "terminal", "none"),
        default="auto",
        help="how to ask you: a desktop dialog, this terminal, or neither (only "
        "`allowhelp-agent allow`); auto picks what this session has (default auto)",
    )
    run.set_defaults(func=cmd_run)

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
