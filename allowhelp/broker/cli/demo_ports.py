"""Where the demo listens: the same ports at every start.

Enrolment tokens carry the console's URL, and the demo's agent pinned the
tunnel's address when it enrolled; a demo that moved to other ports would
strand both. So the addresses a demo folder listened on are remembered in its
``ports.json`` and taken again at the next start. The first time, the usual
ports are taken when free, else ports the kernel picks.

"Free" is judged by binding exactly as the broker's listener will
(``listen.bind``: ``SO_REUSEADDR``), so a port whose last connections still
linger in TIME-WAIT after a stop counts as free, as it is for the listener.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.listen import bind
from allowhelp.broker.settings import RuntimeInfo, format_hostport, parse_hostport

PORTS_FILE = "ports.json"
DEFAULTS = {"https": "127.0.0.1:8443", "tunnel": "127.0.0.1:8022"}


@dataclass(frozen=True)
class DemoAddresses:
    https: str
    tunnel: str


def is_free(hostport: str) -> bool:
    host, port = parse_hostport(hostport, "address")
    try:
        bind(host, port).close()
    except ValueError:
        return False
    return True


def free_or_zero(hostport: str) -> str:
    """Keep the usual port when it is free; otherwise let the kernel pick one."""
    if is_free(hostport):
        return hostport
    host, _ = parse_hostport(hostport, "address")
    return format_hostport(host, 0)


def remembered(root: Path) -> dict[str, str]:
    """The addresses this demo folder listened on last, or nothing the first time."""
    path = root / PORTS_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete it to pick ports anew") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a JSON object; delete it to pick ports anew")
    found: dict[str, str] = {}
    for name in DEFAULTS:
        value = raw.get(name)
        if value is None:
            continue
        host, port = parse_hostport(str(value), f"{name} address in {path}")
        if port == 0:
            raise ValueError(f"{path} names no port for {name}; delete it to pick ports anew")
        found[name] = format_hostport(host, port)
    return found


def choose(root: Path, *, https: str | None, tunnel: str | None) -> DemoAddresses:
    """An address given on the command line is used as given; else the one this
    folder used last (refused with a clear message when another program took
    it); else the usual one when free, else one the kernel picks."""
    memory = remembered(root)

    def pick(name: str, asked: str | None) -> str:
        if asked is not None:
            return asked
        if name in memory:
            if not is_free(memory[name]):
                raise ValueError(
                    f"{memory[name]}, where this demo's {name} listened last, is in use by "
                    f"another program: stop it, or pass --{name} HOST:PORT (the tokens made "
                    f"before then point to the old address; {root / PORTS_FILE} has it)"
                )
            return memory[name]
        return free_or_zero(DEFAULTS[name])

    return DemoAddresses(https=pick("https", https), tunnel=pick("tunnel", tunnel))


def remember(root: Path, info: RuntimeInfo) -> None:
    """Keep the addresses the broker listens on now (the kernel's picks included)."""
    path = root / PORTS_FILE
    partial = path.with_name(f".{PORTS_FILE}.tmp")
    partial.write_text(json.dumps({"https": info.https, "tunnel": info.tunnel}) + "\n")
    os.replace(partial, path)
