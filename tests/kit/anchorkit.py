"""A serving broker whose anchor file holds a head of its own, for tests that then
delete, replace or cut that file while it runs (``test_audit_sinks.py``,
``test_anchors_midrun.py``)."""

from __future__ import annotations

from pathlib import Path

from collectorkit import Collector

from allowhelp.broker.audit.anchor import read_anchors
from allowhelp.broker.audit.chain import read_head
from harness import ADMIN, ADMIN_PW, Broker, Desk, Fleet, wait_for


def anchored_broker(fleet: Fleet, collector: Collector) -> tuple[Broker, Path, int]:
    """A broker anchoring every record to its file and to ``collector``; the file, and
    the head of serve's own login record it holds."""
    broker = fleet.broker(extra=["--syslog", collector.url, "--audit-anchor-every", "1"])
    broker.start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    anchors = broker.data / "audit.anchors"
    Desk.login(broker, ADMIN, ADMIN_PW).close()  # serve's own record, anchored by serve
    head = read_head(broker.data / "audit.sqlite3")[0]
    wait_for(lambda: max(a.seq for a in read_anchors(anchors)) == head, 30, "serve's head")
    return broker, anchors, head
