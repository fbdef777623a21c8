"""``allowhelp-agent run``: the agent's long-running process, per user or as the
machine service (``--system``), idling on its SSH tunnel or on the doorbell
(``--idle doorbell``, docs/doorbell-agent.md; ``--idle woken`` is the full agent
the doorbell starts, not in ``--help``)."""

from __future__ import annotations

import argparse

from allowhelp.agent.cliargs import config_arg, config_dir, need_root, prompt_arg, seconds
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _

IDLE_WAYS = ("tunnel", "doorbell", "woken")  # woken: started by the doorbell, not in --help
LINGER_DEFAULT = 60.0


def check_linger(args: argparse.Namespace) -> float | None:
    """The full agent's ``--linger`` (started by the doorbell: ``--idle woken``), else None."""
    if args.linger is not None and args.idle == "tunnel":
        raise ValueError(_("--linger needs --idle doorbell: with --idle tunnel the agent stays"))
    linger = LINGER_DEFAULT if args.linger is None else args.linger
    if not 1.0 <= linger <= 86400.0:
        raise ValueError(_("--linger must be between 1 and 86400 seconds"))
    return linger if args.idle == "woken" else None


def cmd_run(args: argparse.Namespace) -> int:
    linger = check_linger(args)
    if not 1.0 <= args.reconnect_cap <= 600.0:  # checked here too: the doorbell walks by it
        raise ValueError(_("--reconnect-cap must be between 1 and 600 seconds"))
    if args.system:
        need_root("run --system")
        if args.prompt is not None:
            raise AgentError(_("run --system shows no prompts: `allowhelp-agent session` does"))
    if args.idle == "doorbell":  # before anything heavy is imported: it stays small
        from allowhelp.agent.doorbell import run_doorbell  # noqa: PLC0415

        return run_doorbell(
            config_dir(args), args.argv, system=args.system, reconnect_cap=args.reconnect_cap
        )
    from allowhelp.agent.runner import run_agent, run_machine  # noqa: PLC0415
    from allowhelp.runtime import run_event_loop, tune_malloc  # noqa: PLC0415

    tune_malloc()
    if args.system:
        run_event_loop(
            run_machine(config_dir(args), reconnect_cap=args.reconnect_cap, linger=linger)
        )
        return 0
    run_event_loop(
        run_agent(
            config_dir(args),
            reconnect_cap=args.reconnect_cap,
            prompt=args.prompt or "auto",
            linger=linger,
        )
    )
    return 0


def idle_way(text: str) -> str:
    if text not in IDLE_WAYS:
        raise argparse.ArgumentTypeError(_("%(value)r is not tunnel or doorbell") % {"value": text})
    return text


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help=_("dial the broker and wait for help requests"))
    run.add_argument(
        "--system",
        action="store_true",
        help=_(
            "run as the machine service (root): every signed-in user's sessions go "
            "through it; `allowhelp-agent session` shows the prompts"
        ),
    )
    config_arg(run)
    run.add_argument(
        "--reconnect-cap",
        type=seconds,
        default=30.0,
        metavar=_("SECONDS"),
        help=_("longest wait between two attempts to reach the broker (default 30)"),
    )
    prompt_arg(run, None)
    run.add_argument(
        "--idle",
        type=idle_way,
        default="tunnel",
        metavar="{tunnel,doorbell}",
        help=_(
            "what waits while nobody needs the agent: the SSH tunnel (default), or a "
            "small doorbell process that starts the full agent when the help desk rings"
        ),
    )
    run.add_argument(
        "--linger",
        type=seconds,
        default=None,
        metavar=_("SECONDS"),
        help=_("with --idle doorbell: how long the full agent stays once idle (default 60)"),
    )
    run.set_defaults(func=cmd_run)
