"""The addresses in a ``nodes.list`` (docs/multinode.md): where the other broker nodes
take agents. Hostile text from the wire and from the agent's state file alike, so
both check it here, the same way.

A tunnel address is ``host:port`` (``[v6]:port``) of a node's raw SSH port; a URL is
``wss://host[:port]/path`` of the same SSH on its HTTPS port. Nothing else: no user
part, no query, no spaces or control characters, bounded lengths and counts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from allowhelp.protocol.text import ascii_digits

MAX_NODES = 16  # addresses of each kind in one list (a cluster is a few nodes)
MAX_ADDRESS = 300  # characters in one address
# A DNS name (letters, digits, '-', '.', '_'), or an IP address checked below.
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\Z")
_PATH = re.compile(r"/[A-Za-z0-9/_.~-]{0,200}\Z")


class AddressError(ValueError):
    """An address that is not one a node may give; the message says why."""


def _host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise AddressError("not an IPv6 address in brackets") from None
    if not _HOSTNAME.match(host):
        raise AddressError("not a host name")
    return host


def _port(text: str) -> int:
    if not ascii_digits(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise AddressError("the port must be 1 to 65535")
    return int(text)


def tunnel_address(text: str) -> tuple[str, int]:
    """``host:port`` → (host, port), the host as ``socket`` takes it (no brackets)."""
    if not 3 <= len(text) <= MAX_ADDRESS:
        raise AddressError(f"a tunnel address is 3 to {MAX_ADDRESS} characters")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError("a tunnel address is host:port")
    if ":" in host and not host.startswith("["):
        raise AddressError("an IPv6 address goes in brackets")
    return _host(host), _port(port)


def tunnel_url(text: str) -> str:
    """A ``wss://`` URL with a host, an optional port and a plain path; returned as is."""
    if not 7 <= len(text) <= MAX_ADDRESS or not text.isprintable() or " " in text:
        raise AddressError(f"a tunnel URL is 7 to {MAX_ADDRESS} printable characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"not a URL ({exc})") from None
    if parts.scheme != "wss":
        raise AddressError("a tunnel URL starts with wss://")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise AddressError("a tunnel URL has no user, query or fragment")
    netloc_host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    _host(netloc_host)
    if port == 0:
        raise AddressError("the port must be 1 to 65535")
    if not _PATH.match(parts.path):
        raise AddressError("a tunnel URL has a plain path")
    return text


def checked_list(value: object, what: str, check: Callable[[str], object]) -> tuple[str, ...]:
    """A list of at most ``MAX_NODES`` distinct addresses, each passing ``check``."""
    if not isinstance(value, (list, tuple)):
        raise AddressError(f"{what} must be a list")
    if len(value) > MAX_NODES:
        raise AddressError(f"{what} has more than {MAX_NODES} addresses")
    seen: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise AddressError(f"{what} holds something other than text")
        check(item)
        if item not in seen:
            seen.append(item)
    return tuple(seen)


def checked_nodes(value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A whole node list, as ``nodes.list``, the enrolment answer and ``nodes.json``
    give it: an object whose ``tunnels`` and ``urls`` (each missing: none) pass
    :func:`checked_list`; (tunnels, urls). The one check of all three."""
    if not isinstance(value, dict):
        raise AddressError("not a JSON object")
    return (
        checked_list(value.get("tunnels", []), "tunnels", tunnel_address),
        checked_list(value.get("urls", []), "urls", tunnel_url),
    )
