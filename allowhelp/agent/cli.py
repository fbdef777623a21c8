"""``allowhelp-agent``: enroll, run.

Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import AgentConfig, default_config_dir
from .errors import AgentError

PROG = "allowhelp-agent"
Command = Callable[[argparse.Namespace], int]


def config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else default_config_dir()


def cmd_enroll(args: argparse.Namespace) -> int:
    from .enrol import enrol

    config = enrol(args.token, config_dir(args))
    print(f"enrolled: this PC is agent {config.agent_id} of {config.broker_url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .tunnel import AgentTunnel

    folder = config_dir(args)
    config = AgentConfig.load(folder)
    tunnel = AgentTunnel(config, folder, reconnect_cap=args.reconnect_cap)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await tunnel.run_forever(stop)

    asyncio.run(main())
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
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # data, keys, databases and their WAL files: owner only
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    func: Command = args.func
    try:
        return func(args)
    except (AgentError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
