"""The agent's configuration folder, written once at enrolment.

Holds the pinned broker CA and tunnel key: everything the agent will ever
trust. Folder 0700, files 0600, written atomically so a crash mid-enrolment
leaves either the old configuration or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from allowhelp.agent.errors import ConfigError
from allowhelp.agent.i18n import _

CONFIG_FILE = "agent.json"
HOST_KEY_FILE = "host_key"


def default_config_dir() -> Path:
    env = os.environ.get("ALLOWHELP_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "allowhelp" / "agent"


@dataclass(frozen=True)
class AgentConfig:
    broker_url: str
    ca_pem: str
    ca_fingerprint: str
    tunnel_host: str  # the raw SSH port; "" (port 0) when the broker has it off
    tunnel_port: int
    broker_tunnel_key: str
    agent_id: str
    organisation: str
    # The same SSH on the console's HTTPS port (wss://.../api/v1/tunnel); older
    # configurations have none. Tried when the raw port cannot be reached.
    tunnel_url: str = ""
    proxy: str = field(default="", repr=False)  # http://[user:pw@]host:port, or "direct"

    @property
    def routes(self) -> list[str]:
        """The ways to the broker this PC may take, the raw port first."""
        return [
            name for name, there in (("ssh", self.tunnel_port), ("https", self.tunnel_url)) if there
        ]

    @property
    def dialled_hosts(self) -> list[str]:
        """The names this PC dials the broker by (its HTTPS port for the doorbell and
        enrolment, its SSH port, the tunnel on its HTTPS port): a proxy setting that
        can never work for one of them stops the agent and the doorbell alike."""
        urls = (self.broker_url, self.tunnel_url)
        names = [*(urlsplit(url).hostname or "" for url in urls if url), self.tunnel_host]
        return [name for name in dict.fromkeys(names) if name]

    def save(self, folder: Path) -> None:
        write_private(folder / CONFIG_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> AgentConfig:
        path = folder / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
            optional = {"tunnel_url", "proxy"}
            config = cls(
                **{
                    name: raw[name]
                    for name in cls.__dataclass_fields__
                    if name in raw or name not in optional
                }
            )
        except FileNotFoundError:
            raise ConfigError(
                _(
                    "this agent is not enrolled (%(path)s is missing): run "
                    "`allowhelp-agent enroll TOKEN --config %(folder)s` first"
                )
                % {"path": path, "folder": folder}
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                _("%(path)s is damaged (%(error)s): enrol again") % {"path": path, "error": exc}
            ) from exc
        if not isinstance(config.tunnel_port, int) or not 0 <= config.tunnel_port < 65536:
            raise ConfigError(
                _("%(path)s has an invalid tunnel port: enrol again") % {"path": path}
            )
        if not isinstance(config.tunnel_url, str) or not isinstance(config.proxy, str):
            raise ConfigError(
                _("%(path)s is damaged (tunnel_url, proxy): enrol again") % {"path": path}
            )
        if not isinstance(config.ca_pem, str) or config.ca_pem.count("-----BEGIN ") > 1:
            raise ConfigError(  # one CA is pinned (none: the SSH port alone): a second one, never
                _("%(path)s trusts other than one certificate authority: enrol again")
                % {"path": path}
            )
        if not config.routes:
            raise ConfigError(
                _("%(path)s names no way to the broker: enrol again") % {"path": path}
            )
        return config


def prepare_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically; it is never readable by others, not even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
