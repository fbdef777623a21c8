"""The files of one installation: their names, and what ``serve`` opens first.

Shared by ``serve`` (node/server.py), the command line (``user add``, ``token
create``, ``audit``, ``demo``) and backup/restore, so that every one of them
names the same files.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.opening import AuditSinks, open_with_sinks
from allowhelp.broker.audit.options import AuditOptions
from allowhelp.broker.audit.syslog import SyslogForwarder
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.settings import BrokerSettings, is_ip, url_host
from allowhelp.broker.store.core import StorePlace
from allowhelp.certs.pki import AGENT_TLS_NAME, BrokerPKI, ensure_broker_pki

AUDIT_FILE = "audit.sqlite3"
STORE_FILE = "broker.sqlite3"
NODE_FILE = "node.id"  # this broker as a node: its id, made at its first start (node/cluster.py)
WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - names to leave out of the certificate


@dataclass(frozen=True)
class DataFolder:
    """The files of one installation that ``serve`` opens before its event loop
    work starts: PKI, audit log, syslog. The store (``broker.sqlite3``) is opened
    by ``serve`` on its own threads (``store/worker.py``), at ``store_path``."""

    audit: AuditLog
    pki: BrokerPKI
    store_path: StorePlace  # the SQLite file, or --store's shared database
    forwarder: SyslogForwarder | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path,
        hosts: list[str],
        syslog_url: str | None = None,
        audit_options: AuditOptions | None = None,
        store: PostgresUrl | None = None,
    ) -> DataFolder:
        pki = ensure_broker_pki(data_dir, hosts)
        # The same wiring as the command line's records (audit/opening.py), remembered for it.
        sinks = AuditSinks(syslog_url, audit_options)
        # A node's first start on a shared store (no node.id yet: node/cluster.py): its
        # anchor file is new, not missing.
        joining = store is not None and not (data_dir / NODE_FILE).exists()
        place = store or data_dir / AUDIT_FILE
        opened = open_with_sinks(
            place, data_dir, sinks, actor="system", remember=True, joining=joining
        )
        return cls(opened.audit, pki, store or data_dir / STORE_FILE, opened.forwarder)

    def close(self) -> None:
        self.audit.close()
        if self.forwarder is not None:
            self.forwarder.close()


def tls_hosts(settings: BrokerSettings) -> list[str]:
    hosts = [url_host(settings.public_url)] if settings.public_url else []
    hosts.append(AGENT_TLS_NAME)  # what agents ask for (node/tls.py)
    if settings.https_host not in WILDCARDS and settings.https_host not in hosts:
        hosts.append(settings.https_host)
    hostname = socket.gethostname()
    if hostname and not is_ip(hostname):
        hosts.append(hostname)
    return hosts
