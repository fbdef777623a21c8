"""What the agent's commands share (``cli.py``, ``clirun.py``): the configuration
folder, the root check, and the arguments several commands take."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from allowhelp.agent.config import default_config_dir
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _

SYSTEM_CONFIG_DIR = Path("/etc/allowhelp/agent")
# systemd's ConfigurationDirectory= puts the folder it made here (the unit's is
# /etc/allowhelp/agent): the machine service takes it when no --config is given.
SYSTEMD_CONFIG_ENV = "CONFIGURATION_DIRECTORY"


def system_config_dir() -> Path:
    """The machine service's folder: systemd's ``$CONFIGURATION_DIRECTORY`` (its first
    path) when it set one, else /etc/allowhelp/agent."""
    given = os.environ.get(SYSTEMD_CONFIG_ENV, "").split(":")[0]
    return Path(given) if os.path.isabs(given) else SYSTEM_CONFIG_DIR


def config_dir(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return system_config_dir() if getattr(args, "system", False) else default_config_dir()


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise AgentError(
            _("%(what)s runs as root (the machine service): use sudo") % {"what": what}
        )


def seconds(text: str) -> float:
    """A number of seconds, refused in the user's words (argparse would name "float")."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a number of seconds") % {"value": text}
        ) from None


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar=_("FOLDER"),
        help=_("configuration folder (default: $ALLOWHELP_CONFIG or ~/.config/allowhelp/agent)"),
    )


def prompt_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--prompt",
        choices=("auto", "dialog", "terminal", "none"),
        default=default,
        help=_(
            "how to ask you: a desktop dialog, this terminal, or neither (only "
            "`allowhelp-agent allow`); auto picks what this session has (default auto)"
        ),
    )
