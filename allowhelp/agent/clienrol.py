"""``allowhelp-agent enroll``: the token from the command line or a file, then enrolment.

``--token-file FILE`` (or ``-`` for standard input) keeps the token out of ``ps``:
the packages' scripts use it. A file that cannot be a token (too large, not text,
empty) is refused in one line.
"""

from __future__ import annotations

import argparse
import sys

from allowhelp.agent.cliargs import config_dir, need_root
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _

# Above the longest token (4 KiB): a bigger file is not a token file.
MAX_TOKEN_FILE = 8 * 1024


def cmd_enroll(args: argparse.Namespace) -> int:
    from allowhelp.agent.enrol import enrol  # noqa: PLC0415 - only enroll loads it (idle memory)

    token = enrolment_token(args.token, args.token_file)
    if args.system:
        need_root("enroll --system")
    config = enrol(token, config_dir(args), args.proxy or "", system=args.system)
    print(
        _("enrolled: this PC is agent %(agent)s of %(broker)s")
        % {"agent": config.agent_id, "broker": config.broker_url}
    )
    return 0


def enrolment_token(token: str | None, token_file: str | None) -> str:
    """The token from the command line or from ``--token-file`` (exactly one of them)."""
    if token is not None and token_file is not None:
        raise AgentError(_("give the token or --token-file FILE, not both"))
    if token_file is not None:
        return read_token_file(token_file)
    if token is None:
        raise AgentError(_("give the token, or --token-file FILE to read it from a file"))
    return token


def read_token_file(name: str) -> str:
    """The token in file ``name`` ("-": standard input), without the whitespace around it."""
    where = _("standard input") if name == "-" else name
    try:
        data = _read_at_most(name, MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise AgentError(
            _("cannot read the token file %(file)s: %(error)s")
            % {"file": where, "error": exc.strerror or exc}
        ) from None
    if len(data) > MAX_TOKEN_FILE:
        raise AgentError(
            _("%(file)s is larger than %(size)s KiB: it is not an enrolment token")
            % {"file": where, "size": MAX_TOKEN_FILE // 1024}
        )
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AgentError(
            _("%(file)s is not text: it is not an enrolment token") % {"file": where}
        ) from None
    if not token:
        raise AgentError(_("no enrolment token in %(file)s") % {"file": where})
    return token


def _read_at_most(name: str, size: int) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read(size)
    with open(name, "rb") as file:
        return file.read(size)
