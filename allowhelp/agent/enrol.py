"""Enrolment: trust exactly the CA named in the token, then register this PC.

The token carries the SHA-256 of the broker's CA. The agent fetches the CA,
compares it, and from then on trusts that CA alone (never the system store)
for every HTTPS call, and the broker's tunnel key alone for the tunnel. Uses
only the standard library so the agent stays light.

Every connection asks for the name ``AGENT_TLS_NAME`` (SNI), not the URL's
host: a broker that serves the admin's own (say public) certificate to
browsers answers that name with the certificate made under its own CA, the
one pinned here. The host name is still checked, against that name.
"""

from __future__ import annotations

import getpass
import http.client
import json
import logging
import re
import socket
import ssl
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from allowhelp import __version__
from allowhelp.agent.config import HOST_KEY_FILE, AgentConfig, prepare_folder
from allowhelp.agent.errors import EnrolError
from allowhelp.agent.hello import os_description
from allowhelp.agent.i18n import N_, _
from allowhelp.agent.peers import KnownNodes
from allowhelp.agent.proxy import proxy_for, refusal_hint
from allowhelp.certs.errors import TokenError
from allowhelp.certs.pki import (
    AGENT_TLS_NAME,
    ca_fingerprint,
    fingerprints_equal,
    one_certificate,
)
from allowhelp.certs.sshkeys import generate_host_key, parse_public_key, public_key_line
from allowhelp.certs.token import EnrolmentToken

log = logging.getLogger(__name__)

TIMEOUT = 15.0
TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})")
MAX_ANSWER = 256 * 1024


class _BrokerConnection(http.client.HTTPSConnection):
    """HTTPS to the broker's address, asking for (and checking) ``AGENT_TLS_NAME``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=TIMEOUT, context=context)
        self._pinned = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._pinned.wrap_socket(self.sock, server_hostname=AGENT_TLS_NAME)


def _request(
    url: str,
    method: str,
    path: str,
    context: ssl.SSLContext,
    body: bytes | None = None,
    *,
    proxy_setting: str = "",
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        proxy = proxy_for(host, proxy_setting)
    except ValueError as exc:
        raise EnrolError(_("the proxy setting is not usable: %(error)s") % {"error": exc}) from None
    if proxy is None:
        conn = _BrokerConnection(host, port, context)
    else:  # CONNECT through the proxy, its Basic authentication on the CONNECT only
        conn = _BrokerConnection(proxy.host, proxy.port, context)
        authorization = proxy.authorization()
        conn.set_tunnel(
            host, port, headers={"Proxy-Authorization": authorization} if authorization else None
        )
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read(MAX_ANSWER)
    except ssl.SSLCertVerificationError as exc:
        raise EnrolError(
            _(
                "the broker at %(url)s has a TLS certificate that the pinned CA did not sign "
                "(%(why)s): it may be an impostor; not enrolling"
            )
            % {"url": url, "why": exc.verify_message}
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        via = _(" through %(proxy)s") % {"proxy": proxy} if proxy is not None else ""
        refused = TUNNEL_REFUSED.match(reason)
        if proxy is not None and refused:  # http.client's words for a refused CONNECT
            hint = refusal_hint(int(refused.group(1)), proxy, f"{host}:{port}")
            reason = f"{reason}: {hint}" if hint else reason
        raise EnrolError(
            _("cannot reach the broker at %(url)s%(via)s: %(reason)s")
            % {"url": url, "via": via, "reason": reason}
        ) from exc
    finally:
        conn.close()


# The token's own words (allowhelp/certs/token.py, which has no catalog), marked here;
# tests/agent/test_cli_language.py keeps the two lists equal.
TOKEN_PROBLEMS = (
    N_("this is not an allowhelp enrolment token"),
    N_("this enrolment token was made by a newer allowhelp: update the agent"),
    N_("enrolment token is damaged (checksum mismatch): copy it again"),
    N_("enrolment token is malformed"),
)


def token_problem(english: str) -> str:
    """A token's refusal in the user's language; what follows the known words (a
    detail in parentheses) is kept as it came."""
    for problem in TOKEN_PROBLEMS:
        if english.startswith(problem):
            return _(problem) + english[len(problem) :]
    return english


def fetch_pinned_ca(token: EnrolmentToken, proxy_setting: str = "") -> str:
    """Get the CA over an unverified channel and accept it only if it matches the pin."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    status, body = _request(
        token.url, "GET", "/api/v1/enrol/ca", probe, proxy_setting=proxy_setting
    )
    if status != 200:
        raise EnrolError(
            _("the server at %(url)s is not an allowhelp broker (HTTP %(status)s)")
            % {"url": token.url, "status": status}
        )
    try:
        pem = one_certificate(body)  # and nothing after it: only it is pinned and trusted
        got = ca_fingerprint(pem.encode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnrolError(
            _("the server at %(url)s sent no usable CA certificate") % {"url": token.url}
        ) from exc
    if not fingerprints_equal(got, token.ca_fingerprint):
        raise EnrolError(
            _(
                "the broker at %(url)s presents a CA with fingerprint %(got)s..., but the "
                "token pins %(pinned)s...: it may be an impostor; not enrolling"
            )
            % {"url": token.url, "got": got[:16], "pinned": token.ca_fingerprint[:16]}
        )
    return pem


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem)
    return context


def enrol(
    token_text: str, folder: Path, proxy_setting: str = "", *, system: bool = False
) -> AgentConfig:
    """Enrol this PC into ``folder``; ``proxy_setting`` (a proxy URL, or "direct") is
    kept for the tunnel. ``system``: the machine service's identity (no user yet: the
    service reports who is signed in when it runs)."""
    try:
        token = EnrolmentToken.decode(token_text)
    except TokenError as exc:
        raise EnrolError(token_problem(str(exc))) from exc
    ca_pem = fetch_pinned_ca(token, proxy_setting)
    prepare_folder(folder)
    host_key = generate_host_key(folder / HOST_KEY_FILE)
    request = {
        "secret": token.secret,
        "host_key": host_key,
        "hostname": socket.gethostname(),
        "os": os_description(),
        "user": "" if system else getpass.getuser(),
        "version": __version__,
    }
    status, body = _request(
        token.url,
        "POST",
        "/api/v1/enrol",
        pinned_context(ca_pem),
        json.dumps(request).encode(),
        proxy_setting=proxy_setting,
    )
    answer = _json(body)
    if status != 201:
        message = answer.get("message") if isinstance(answer.get("message"), str) else None
        raise EnrolError(
            _("the broker refused to enrol this PC: %(why)s") % {"why": message or f"HTTP {status}"}
        )
    config = replace(_config_from(answer, token, ca_pem), proxy=proxy_setting)
    config.save(folder)
    KnownNodes(folder).enrolled_with(answer.get("nodes"))  # the other nodes (#21)
    log.info("enrolled as agent=%s with %s", config.agent_id, token.url)
    return config


def _json(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _config_from(answer: dict[str, object], token: EnrolmentToken, ca_pem: str) -> AgentConfig:
    try:
        tunnel = answer.get("tunnel")  # None: the broker's raw SSH port is off
        host, _sep, port = str(tunnel).rpartition(":") if tunnel else ("", "", "0")
        tunnel_url = answer.get("tunnel_url") or ""
        if not isinstance(tunnel_url, str) or not (tunnel or tunnel_url):
            raise ValueError(_("no tunnel to dial"))
        key = public_key_line(parse_public_key(str(answer["tunnel_key"])))
        return AgentConfig(
            broker_url=token.url,
            ca_pem=ca_pem,
            ca_fingerprint=token.ca_fingerprint,
            tunnel_host=host.strip("[]"),
            tunnel_port=int(port),
            tunnel_url=tunnel_url,
            broker_tunnel_key=key,
            agent_id=str(answer["agent_id"]),
            organisation=str(answer.get("organisation", "")),
        )
    except (KeyError, ValueError) as exc:
        raise EnrolError(
            _("the broker's enrolment answer is incomplete (%(error)s)") % {"error": exc}
        ) from exc
