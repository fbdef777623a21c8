"""A web proxy's URL, its start-up check, and the ``CONNECT`` request through it
(no I/O, no asyncio).

Shared by the agent's tunnel and enrolment (``proxy.py``, which opens the
connections) and the idle doorbell (``doorbellhttp.py``, standard library only).
A setting that can never work stops the full agent and the doorbell alike at their
start (``check_setting``): both read ``https_proxy`` and ``agent.json`` once.
The proxy's password lives in ``Proxy`` only: ``str(proxy)`` and every message
name the proxy by host and port, never with its credentials.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from allowhelp.agent.errors import ConfigError
from allowhelp.agent.i18n import _

DIRECT = "direct"  # a configured proxy of "direct": ignore the environment's


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"the proxy {host}:{self.port}"

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value, when the URL carried a user."""
        if not self.username:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_proxy(url: str) -> Proxy:
    """``http://[user:password@]host[:port][/]``; ``ValueError`` naming no secret."""
    try:
        parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    except ValueError:  # its text quotes the user and password (NFKC's netloc check)
        raise ValueError(_("the proxy URL is not a valid URL")) from None
    if parts.scheme != "http":
        raise ValueError(
            _(
                "the proxy must be an http:// URL (HTTP CONNECT; the tunnel inside is "
                "already encrypted), e.g. http://proxy.example.org:3128"
            )
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        # Most often a password with a bare "/", "?" or "#": the URL would end early
        # (``http://u:2024/pw@proxy`` reads as host "u", port 2024). Said without the URL.
        raise ValueError(
            _(
                "the proxy URL has a path, query or fragment (a '/', '?' or '#' in "
                "its user or password must be percent-encoded)"
            )
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(_("the proxy URL has an invalid port")) from None
    if not parts.hostname:
        raise ValueError(_("the proxy URL has no host name"))
    if not _spellable(parts.hostname):
        raise ValueError(_("the proxy URL's host name is not a valid name"))
    return Proxy(
        parts.hostname,
        port,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    )


def _spellable(host: str) -> bool:
    """Whether the resolver can be asked for ``host``: ``socket`` spells a name in
    IDNA, and one it cannot ("proxy..example", a label over 63 characters) is a
    ``UnicodeError`` (a ``ValueError``, not an ``OSError``) on every try."""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def proxy_for(host: str, configured: str = "") -> Proxy | None:
    """The proxy for a connection to ``host``: the configured one, else the
    environment's ``https_proxy`` unless ``no_proxy`` names the host."""
    if configured:
        return None if configured == DIRECT else parse_proxy(configured)
    if not any(value and name.lower() == "https_proxy" for name, value in os.environ.items()):
        return None  # what urllib.request would find too, without loading it (and http.client)
    import urllib.request  # noqa: PLC0415 - only on PCs that have a proxy in the environment

    found = urllib.request.getproxies_environment().get("https")
    if not found or urllib.request.proxy_bypass(host):  # no_proxy (on Linux)
        return None
    return parse_proxy(found)


def check_setting(hosts: Iterable[str], configured: str) -> None:
    """``ConfigError`` when the proxy for any of ``hosts`` is a setting that can
    never work; its message names where it came from, never its password."""
    for host in hosts:
        try:
            proxy_for(host, configured)
        except ValueError as exc:
            source = "agent.json (proxy)" if configured else "https_proxy"
            raise ConfigError(
                _("the proxy setting is not usable: %(error)s") % {"error": f"{source}: {exc}"}
            ) from None


def connect_request(host: str, port: int, proxy: Proxy) -> bytes:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: allowhelp-agent"]
    authorization = proxy.authorization()
    if authorization is not None:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
