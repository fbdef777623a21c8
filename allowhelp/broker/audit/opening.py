"""Opening the audit log where the settings put it: the data folder's SQLite file,
or the PostgreSQL database broker nodes share (imported only then: psycopg)."""

from __future__ import annotations

from allowhelp.broker.audit.anchor import AnchorSink
from allowhelp.broker.audit.format import AuditPlace
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.syslog import SyslogForwarder
from allowhelp.broker.model.database import PostgresUrl


def open_audit(
    place: AuditPlace,
    *,
    forwarder: SyslogForwarder | None = None,
    anchors: AnchorSink | None = None,
) -> AuditLog:
    """The log in the data folder's SQLite file, or in the shared PostgreSQL database."""
    if isinstance(place, PostgresUrl):
        from allowhelp.broker.audit.pg_chain import PgAuditLog  # noqa: PLC0415 - psycopg

        return PgAuditLog.open_url(place, forwarder=forwarder, anchors=anchors)
    return AuditLog.open(place, forwarder=forwarder, anchors=anchors)
