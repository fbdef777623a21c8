"""``allowhelp-broker``: serve, users, enrolment tokens, audit, demo.

Every failure leaves as one line on stderr and a non-zero exit code; a
traceback reaching an operator is a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from allowhelp.broker.audit.options import AuditOptions, add_serve_arguments
from allowhelp.broker.cli.audit import add_audit_commands
from allowhelp.broker.cli.backup import add_backup_commands
from allowhelp.broker.errors import BrokerError
from allowhelp.broker.model.database import STORE_ENV, parse_store
from allowhelp.broker.settings import (
    DEFAULT_HTTPS,
    DEFAULT_RECORDING_MAX,
    DEFAULT_RECORDINGS_MIN_FREE,
    DEFAULT_TUNNEL,
    BrokerSettings,
    default_data_dir,
)
from allowhelp.runtime import run_command

PROG = "allowhelp-broker"


def _data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder (default: $ALLOWHELP_DATA or ~/.local/share/allowhelp/broker)",
    )


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="keep users, agents, sessions and the audit log in this PostgreSQL database, "
        "shared by several broker nodes: postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(default: $ALLOWHELP_STORE, else SQLite files in the data folder; docs/multinode.md)",
    )


def store_text(args: argparse.Namespace) -> str | None:
    """``--store``, else $ALLOWHELP_STORE (keeps the password off the command line)."""
    text: str | None = args.store
    return text if text is not None else os.environ.get(STORE_ENV) or None


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data) if args.data else default_data_dir()


def cmd_serve(args: argparse.Namespace) -> int:
    from allowhelp.broker.node.server import serve
    from allowhelp.runtime import run_event_loop, tune_malloc

    settings = BrokerSettings.build(
        data_dir(args),
        https=args.https,
        tunnel=args.tunnel,
        public_url=args.public_url,
        organisation=args.organisation,
        syslog_url=args.syslog,
        consent_timeout=args.consent_timeout,
        files_timeout=args.files_timeout,
        recordings=args.recordings,
        recording_max=args.recording_max,
        recordings_min_free=args.recordings_min_free,
        recordings_keep=args.recordings_keep,
        audit=AuditOptions.from_args(args),
        trusted_proxies=args.trusted_proxy,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics=args.metrics,
        webhook=args.webhook,
        webhook_secret_file=args.webhook_secret_file,
        store=store_text(args),
        node_listen=args.node_listen,
        node_address=args.node_address,
    )
    tune_malloc()
    run_event_loop(serve(settings))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from allowhelp.broker.cli.admin import add_user

    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    if password is None:
        raise ValueError("give the password on standard input with --password-stdin")
    store = parse_store(store_text(args))
    add_user(data_dir(args), args.name, args.role, password, full_name=args.full_name, store=store)
    print(f"user {args.name} added with role {args.role}", file=sys.stderr)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from allowhelp.broker.cli.admin import create_token

    store = parse_store(store_text(args))
    print(create_token(data_dir(args), ttl=args.ttl, uses=args.uses, store=store))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from allowhelp.broker.cli.demo import run_demo

    return run_demo(args.data, https=args.https, tunnel=args.tunnel)


def _recording_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--recordings-keep",
        default=None,
        metavar="DURATION",
        help="delete shell and screen recordings of sessions ended longer ago than this,"
        " e.g. 90d (audited as recording.expired; default: keep forever)",
    )
    serve.add_argument(
        "--recordings",
        type=Path,
        default=None,
        metavar="DIR",
        help="where shell recordings go, e.g. on a disk of their own (default: DATA/recordings)",
    )
    serve.add_argument(
        "--recording-max",
        default=DEFAULT_RECORDING_MAX,
        metavar="SIZE",
        help=f"a recording stops (audited; the shell goes on) at this size"
        f" (default {DEFAULT_RECORDING_MAX})",
    )
    serve.add_argument(
        "--recordings-min-free",
        default=DEFAULT_RECORDINGS_MIN_FREE,
        metavar="SIZE",
        help="recordings stop before their filesystem has less free space than this; at least"
        f" 5%% of it when the data folder is there too (default {DEFAULT_RECORDINGS_MIN_FREE})",
    )


def _operations_args(serve: argparse.ArgumentParser) -> None:
    """The admin's own certificate and monitoring (docs/operations.md)."""
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve the console with this certificate chain (PEM, leaf first) instead of the"
        " broker's own; reloaded on SIGHUP. Needs --tls-key",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the private key (PEM, unencrypted) of --tls-cert",
    )
    serve.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    serve.add_argument(
        "--node-listen",
        default=None,
        metavar="HOST:PORT",
        help="take sessions relayed by the other nodes on one --store here, mutual TLS "
        "under the shared CA (docs/multinode.md; default: off)",
    )
    serve.add_argument(
        "--node-address",
        default=None,
        metavar="HOST",
        help="the host the other nodes dial for --node-listen (default: its host)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="allowhelp broker")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker (HTTPS console + agent tunnel)")
    _data_arg(serve)
    _store_arg(serve)
    serve.add_argument("--https", default=DEFAULT_HTTPS, metavar="HOST:PORT")
    serve.add_argument(
        "--tunnel",
        default=DEFAULT_TUNNEL,
        metavar="HOST:PORT|off",
        help="the raw SSH port agents dial; 'off': agents ride the HTTPS port alone "
        "(they always can, at /api/v1/tunnel)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy (address or network) whose X-Forwarded-For names the "
        "client; repeatable. Without it the header is ignored",
    )
    serve.add_argument(
        "--webhook",
        default=None,
        metavar="URL",
        help="POST each ended session's report (JSON, HMAC-signed) here; retried until a "
        "2xx answer (docs/integrations.md)",
    )
    serve.add_argument(
        "--webhook-secret-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the HMAC-SHA256 key for --webhook's X-Allowhelp-Signature (at least 16 bytes)",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="the URL technicians open, e.g. https://help.example.org:8443",
    )
    serve.add_argument(
        "--organisation",
        default="IT help desk",
        help="shown to the PC user in every consent prompt",
    )
    serve.add_argument(
        "--syslog",
        default=None,
        metavar="udp://HOST:PORT|tcp://HOST:PORT",
        help="also forward every audit event to this syslog collector",
    )
    serve.add_argument(
        "--consent-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the PC user has to answer a request (default 60)",
    )
    serve.add_argument(
        "--files-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the PC's file server has for each call of a files session (a listing,"
        " each chunk of a transfer) before the request ends with 504 (1 to 45, default 30)",
    )
    _recording_args(serve)
    _operations_args(serve)
    add_serve_arguments(serve)  # the audit log's: anchors, start-up check, coalescing
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage technicians and admins")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=["admin", "technician"], required=True)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    add.add_argument("--full-name", default=None, help="shown to PC users (default: NAME)")
    _data_arg(add)
    _store_arg(add)
    add.set_defaults(func=cmd_user_add)

    token = sub.add_parser("token", help="enrolment tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new enrolment token")
    _data_arg(create)
    _store_arg(create)
    create.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 7d (default 1h)")
    create.add_argument("--uses", type=int, default=1, help="how many agents may use it")
    create.set_defaults(func=cmd_token_create)

    add_audit_commands(sub, default_data_dir)
    add_backup_commands(sub, default_data_dir)

    demo = sub.add_parser("demo", help="a whole installation on this machine")
    demo.add_argument("--data", type=Path, default=None, help="demo folder (default: ./.demo)")
    # No default here: the demo takes the ports its folder used last (cli/demo_ports.py).
    demo.add_argument(
        "--https",
        default=None,
        metavar="HOST:PORT",
        help="default: as last time, else 127.0.0.1:8443",
    )
    demo.add_argument(
        "--tunnel",
        default=None,
        metavar="HOST:PORT",
        help="default: as last time, else 127.0.0.1:8022",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, args, (ValueError, BrokerError, OSError))


if __name__ == "__main__":
    sys.exit(main())
