"""A node's first start on a shared chain with records begins its own anchor file
quietly (``audit.anchors.begun``, the file marked ``restarted``: it vouches from
there on), where an anchor file gone from a node that has run before is still the
alarm (``audit.anchors.missing``, a warning in the log). Real brokers on a real
PostgreSQL store."""

from __future__ import annotations

import shutil
from pathlib import Path

from allowhelp.broker.audit.anchor import RESTARTED, read_anchors
from harness import ADMIN, ADMIN_PW, Broker, Desk, Fleet, exported

BEGUN = "audit.anchors.begun"
MISSING = "audit.anchors.missing"
ALARM = "AUDIT ANCHOR FILE"


def _types(pg_url: str, target: Path) -> list[str]:
    return [r["type"] for r in exported("--store", pg_url) if r["target"] == str(target)]


def _second_node(fleet: Fleet, home: Broker, pg_url: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / "node-b"
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)
    return fleet.broker("node-b", store=pg_url)


def test_a_new_node_begins_its_anchor_file_without_an_alarm(fleet: Fleet, pg_url: str) -> None:
    home = fleet.broker("node-a", store=pg_url).start()
    home.add_user(ADMIN, ADMIN_PW, role="admin")
    Desk.login(home, ADMIN, ADMIN_PW).close()  # the shared chain holds records

    joining = _second_node(fleet, home, pg_url)
    assert not (joining.data / "node.id").exists()
    joining.start()
    anchors = joining.data / "audit.anchors"
    assert _types(pg_url, anchors) == [BEGUN]
    begun = next(r for r in exported("--store", pg_url) if r["type"] == BEGUN)
    assert begun["code"] == "AH1909" and begun["details"]["why"] == "new node"
    assert read_anchors(anchors)[0].why == RESTARTED  # it vouches from there on
    assert read_anchors(anchors)[0].seq == begun["seq"]
    assert ALARM not in joining.log.read_text()
    assert joining.stop() == 0

    # Once it has run, its file gone is the alarm again.
    anchors.unlink()
    joining.start()
    assert joining.stop() == 0
    assert _types(pg_url, anchors) == [BEGUN, MISSING]
    assert f"{ALARM} {anchors} is missing" in joining.log.read_text()
