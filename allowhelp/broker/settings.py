"""Broker settings, validated once at start-up into a frozen dataclass.

Every check raises ``ValueError`` with a message the operator can act on, so a
typo in a flag fails at start-up instead of at the first connection.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from allowhelp.broker.audit.options import AuditOptions
from allowhelp.broker.model.database import PostgresUrl, parse_store
from allowhelp.protocol.text import ascii_digits

DEFAULT_HTTPS = "0.0.0.0:8443"
DEFAULT_TUNNEL = "0.0.0.0:8022"
RUNTIME_FILE = "broker.json"
RECORDINGS = "recordings"  # under the data folder unless --recordings says where
# A `yes` flood records 25-35 MB/s; a day of ordinary shell work, a few MB.
DEFAULT_RECORDING_MAX = "512MiB"
# Free space a recording leaves on its filesystem (at least 5 % of it when the
# audit log lives there too: see audit/recording.py).
DEFAULT_RECORDINGS_MIN_FREE = "1GiB"
MIN_RECORDING_MAX = 4096  # the header and the marker that says why it stopped
# Each SFTP call of a files session, at most; a node relaying a files request waits
# for each piece of the answer as long as four such calls take (relay/node_http.py).
MAX_FILES_TIMEOUT = 45.0
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def default_data_dir() -> Path:
    env = os.environ.get("ALLOWHELP_DATA")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "allowhelp" / "broker"


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT); port 0 means "pick a free one"."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} must be HOST:PORT, e.g. 0.0.0.0:8443 (got {text!r})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not ascii_digits(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what}: the port must be a number from 0 to 65535 (got {port_text!r})")
    return host, int(port_text)


def parse_tunnel(text: str) -> tuple[str | None, int]:
    """``--tunnel HOST:PORT``, or ``off``: agents then ride the HTTPS port alone."""
    if text.strip().lower() == "off":
        return None, 0
    return parse_hostport(text, "--tunnel")


def parse_trusted_proxies(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--trusted-proxy CIDR``: the reverse proxies whose X-Forwarded-For is believed."""
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"--trusted-proxy must be an address or a network such as 10.0.0.5 or "
                f"10.0.0.0/24 (got {value!r})"
            ) from None
    return tuple(networks)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_public_url(url: str) -> str:
    """The URL technicians type; Origin checks compare against it exactly."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"--public-url must start with https:// (got {url!r})")
    if not parts.hostname:
        raise ValueError(f"--public-url has no host name (got {url!r})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"--public-url must be scheme://host[:port] only (got {url!r})")
    return f"https://{parts.netloc}".lower()


def check_syslog_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
        raise ValueError(f"--syslog must be udp://HOST:PORT or tcp://HOST:PORT (got {url!r})")
    return url


def parse_size(text: str, what: str) -> int:
    """Bytes from 512MiB, 512M, 1g, 4096 (binary units: 1K = 1024)."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (value[:-1], value[-1]) if value[-1:] in UNITS else (value, "")
    if not ascii_digits(number):
        raise ValueError(f"{what} must be a size such as 512MiB, 2G or 4096 (got {text!r})")
    return int(number) * UNITS[unit]


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_keep(text: str | None, what: str) -> float | None:
    """Seconds from 90d, 12h, 2w, 30m, 45s; None for "forever" (or nothing given)."""
    if text is None or text.strip().lower() in ("", "forever"):
        return None
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    if unit not in DURATION_UNITS or not ascii_digits(number) or int(number) == 0:
        raise ValueError(
            f"{what} must be a duration such as 90d, 12h, 2w or 30m, or forever (got {text!r})"
        )
    return float(int(number) * DURATION_UNITS[unit])


def check_tls_pair(cert: Path | None, key: Path | None) -> Path | None:
    """Both files or neither (the certificate's path back); their contents are
    checked when the broker loads them (``node/tls.py``)."""
    if (cert is None) != (key is None):
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise ValueError(
            f"{given} needs {missing} too: give the certificate chain (PEM) with --tls-cert "
            "and its private key with --tls-key, or neither for the broker's own certificate"
        )
    return cert.expanduser().resolve() if cert else None


def check_webhook_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("--webhook must be an http:// or https:// URL with a host")
    if parsed.username or parsed.password:
        raise ValueError("--webhook must not carry a user or password (sign with the secret)")
    return url


def read_webhook_secret(url: str | None, path: Path | None) -> bytes:
    """The HMAC key: the file's content, trailing line break removed; both flags or neither."""
    if url is None and path is None:
        return b""
    if url is None or path is None:
        raise ValueError("--webhook and --webhook-secret-file go together")
    try:
        secret = path.expanduser().read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ValueError(f"--webhook-secret-file {path}: {exc.strerror or exc}") from None
    if len(secret) < 16:
        raise ValueError("--webhook-secret-file must hold a secret of at least 16 bytes")
    return secret


def url_host(url: str) -> str:
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"no host in {url!r}")
    return host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class NodeRelay:
    """``--node-listen HOST:PORT`` and ``--node-address HOST``: where this node takes
    the other nodes' relayed sessions (mutual TLS under the shared CA,
    node/relay_listener.py), and the host the other nodes dial (docs/multinode.md)."""

    host: str
    port: int
    address: str  # the host other nodes dial; the listen host unless --node-address

    @classmethod
    def build(cls, listen: str, address: str | None, store: PostgresUrl | None) -> NodeRelay:
        if store is None:
            raise ValueError(
                "--node-listen relays sessions between nodes on one database: "
                "give --store postgresql://... (or $ALLOWHELP_STORE) too"
            )
        host, port = parse_hostport(listen, "--node-listen")
        dialled = (address or host).strip().strip("[]")
        if not dialled or any(ch in dialled for ch in "/ @?#"):
            raise ValueError(f"--node-address must be a host name or address (got {address!r})")
        if dialled in ("0.0.0.0", "::"):  # noqa: S104 - refused, not bound
            raise ValueError(
                f"--node-listen {listen} listens on every address: say which one the other "
                "nodes dial with --node-address HOST"
            )
        return cls(host, port, dialled)


@dataclass(frozen=True)
class BrokerSettings:
    data_dir: Path
    https_host: str
    https_port: int
    tunnel_host: str | None  # None: --tunnel off, agents ride the HTTPS port alone
    tunnel_port: int
    public_url: str | None  # None: https://localhost:<bound port>, known after bind
    organisation: str = "IT help desk"
    consent_timeout: float = 60.0
    files_timeout: float = 30.0  # --files-timeout: each SFTP call of a files session
    web_session_hours: float = 12.0
    syslog_url: str | None = None
    recordings: Path | None = None  # None: DATA/recordings
    recording_max: int = parse_size(DEFAULT_RECORDING_MAX, "")
    recordings_min_free: int = parse_size(DEFAULT_RECORDINGS_MIN_FREE, "")
    recordings_keep: float | None = None  # --recordings-keep in seconds; None: forever
    audit: AuditOptions = field(default_factory=AuditOptions)  # anchors, start-up check
    trusted_proxies: tuple[str, ...] = ()  # networks whose X-Forwarded-For is believed
    tls_cert: Path | None = None  # --tls-cert/--tls-key: the admin's certificate, or None
    tls_key: Path | None = None  #   for the broker's own (node/tls.py)
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT (node/metrics.py), off by default
    webhook_url: str | None = None  # --webhook: session reports POSTed here (sessions/report.py)
    webhook_secret: bytes = field(default=b"", repr=False)  # --webhook-secret-file's content
    store: PostgresUrl | None = None  # --store: the nodes' shared database; None: SQLite files
    node_relay: NodeRelay | None = None  # --node-listen: sessions relayed between nodes (#21)

    @property
    def recordings_dir(self) -> Path:
        """Where shell recordings go (replay reads them from here too)."""
        return self.recordings or self.data_dir / RECORDINGS

    @classmethod
    def build(
        cls,
        data_dir: Path,
        *,
        https: str = DEFAULT_HTTPS,
        tunnel: str = DEFAULT_TUNNEL,
        public_url: str | None = None,
        organisation: str = "IT help desk",
        syslog_url: str | None = None,
        consent_timeout: float = 60.0,
        files_timeout: float = 30.0,
        recordings: Path | None = None,
        recording_max: str = DEFAULT_RECORDING_MAX,
        recordings_min_free: str = DEFAULT_RECORDINGS_MIN_FREE,
        recordings_keep: str | None = None,
        audit: AuditOptions | None = None,
        trusted_proxies: list[str] | tuple[str, ...] = (),
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        metrics: str | None = None,
        webhook: str | None = None,
        webhook_secret_file: Path | None = None,
        store: str | None = None,
        node_listen: str | None = None,
        node_address: str | None = None,
    ) -> BrokerSettings:
        https_host, https_port = parse_hostport(https, "--https")
        tunnel_host, tunnel_port = parse_tunnel(tunnel)
        if not organisation.strip() or len(organisation) > 100:
            raise ValueError("the organisation name must be 1 to 100 characters")
        if not 2 <= consent_timeout <= 600:
            raise ValueError("--consent-timeout must be between 2 and 600 seconds")
        if not 1 <= files_timeout <= MAX_FILES_TIMEOUT:
            raise ValueError(
                f"--files-timeout must be between 1 and {MAX_FILES_TIMEOUT:.0f} seconds (each"
                " call to the PC's file system; a request may make several)"
            )
        if node_address and not node_listen:
            raise ValueError("--node-address names where --node-listen is dialled: give both")
        shared = parse_store(store)
        cap = parse_size(recording_max, "--recording-max")
        if cap < MIN_RECORDING_MAX:
            raise ValueError(f"--recording-max must be at least {MIN_RECORDING_MAX} bytes")
        return cls(
            data_dir=data_dir.expanduser().resolve(),
            https_host=https_host,
            https_port=https_port,
            tunnel_host=tunnel_host,
            tunnel_port=tunnel_port,
            public_url=check_public_url(public_url) if public_url else None,
            organisation=organisation.strip(),
            syslog_url=check_syslog_url(syslog_url) if syslog_url else None,
            consent_timeout=float(consent_timeout),
            files_timeout=float(files_timeout),
            recordings=recordings.expanduser().resolve() if recordings else None,
            recording_max=cap,
            recordings_min_free=parse_size(recordings_min_free, "--recordings-min-free"),
            recordings_keep=parse_keep(recordings_keep, "--recordings-keep"),
            audit=audit or AuditOptions(),
            trusted_proxies=parse_trusted_proxies(trusted_proxies),
            tls_cert=check_tls_pair(tls_cert, tls_key),
            tls_key=tls_key.expanduser().resolve() if tls_key else None,
            metrics=parse_hostport(metrics, "--metrics") if metrics else None,
            webhook_url=check_webhook_url(webhook) if webhook else None,
            webhook_secret=read_webhook_secret(webhook, webhook_secret_file),
            store=shared,
            node_relay=NodeRelay.build(node_listen, node_address, shared) if node_listen else None,
        )


@dataclass(frozen=True)
class RuntimeInfo:
    """What a running broker tells other commands (``token create``) and tests."""

    public_url: str
    https: str
    tunnel: str  # "off" when agents ride the HTTPS port alone
    tunnel_public: str  # likewise
    pid: int
    metrics: str | None = None  # HOST:PORT of --metrics, when on

    def write(self, data_dir: Path) -> None:
        tmp = data_dir / (RUNTIME_FILE + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(data_dir / RUNTIME_FILE)

    @classmethod
    def read(cls, data_dir: Path) -> RuntimeInfo:
        path = data_dir / RUNTIME_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(
                public_url=str(raw["public_url"]),
                https=str(raw["https"]),
                tunnel=str(raw["tunnel"]),
                tunnel_public=str(raw["tunnel_public"]),
                pid=int(raw["pid"]),
                metrics=str(raw["metrics"]) if raw.get("metrics") else None,
            )
        except FileNotFoundError:
            raise ValueError(
                f"no broker has run with the data folder {data_dir} yet: start "
                f"`allowhelp-broker serve --data {data_dir}` once first"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is damaged ({exc}); restart the broker to rewrite it"
            ) from exc
