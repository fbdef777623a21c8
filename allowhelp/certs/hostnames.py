"""The host names and addresses a broker's TLS certificate is good for (its SANs).

Every host the admin names is checked before anything touches the disk, so a
typo changes nothing; a DNS name is kept in the lowercase A-label form that
certificates carry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from cryptography import x509

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SanValue = str | IPAddress


def sans_for(hosts: Iterable[str]) -> list[SanValue]:
    """Validate every host before touching the disk, so a typo changes nothing."""
    if isinstance(hosts, str):
        raise TypeError("hosts must be a sequence of host names, not a single string")
    sans: list[SanValue] = []
    for host in (*hosts, *DEFAULT_HOSTS):
        value = _parse_host(host)
        if value is not None and value not in sans:
            sans.append(value)
    return sans


def _parse_host(host: str) -> SanValue | None:
    """One DNS name or IP literal, as a certificate SAN value; None for 0.0.0.0 and ::."""
    if not isinstance(host, str):
        raise ValueError(f"host must be a string, not {type(host).__name__}")
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _dns_name(host, text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"invalid host {host!r}: a scoped IPv6 address cannot go in a certificate")
    return None if address.is_unspecified else address


def _dns_name(original: str, text: str) -> str:
    """Normalise a DNS name to the lowercase A-label form that certificates carry."""
    name = text.lower().removesuffix(".")
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(
            f"invalid host name {original!r}: not a valid international name"
        ) from None
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]  # a wildcard covers one label; never a bare '*.tld'
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"invalid host name {original!r}: use a DNS name like 'helpdesk.example.org' "
            "or an IP address, without scheme, port or path"
        )
    return name


def sans_of(cert: x509.Certificate) -> list[SanValue]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns: list[SanValue] = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = san.get_values_for_type(x509.IPAddress)
    return dns + [ip for ip in ips if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)]


def general_names(names: list[SanValue]) -> list[x509.GeneralName]:
    return [x509.DNSName(name) if isinstance(name, str) else x509.IPAddress(name) for name in names]
