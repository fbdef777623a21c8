"""Node A lists node B's agents with their live details (#21, docs/multinode.md "Routing").

Real nodes A and B with ``--node-listen`` on one real PostgreSQL, a real agent on B
whose session has a real X display (Xvfb): node A's agent list shows what the agent
said in its hello to B (who is signed in, the screen engine, the desktop, the
monitors) exactly as B's list does; once the agent is gone, neither lists it online.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness import TECH, TECH_PW, Broker, Fleet, online, staffed_broker, wait_for
from screenkit import start_xserver

RELAY = ("--node-listen", "127.0.0.1:0")
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE")
LIVE_FIELDS = ("system", "signed_in", "screen", "screen_problem", "desktop", "monitors")


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)
    return fleet.broker(name, store=pg_url, extra=list(RELAY)).start()


def _row(broker: Broker, agent_id: str) -> dict[str, Any]:
    return next(r for r in broker.agents(TECH, TECH_PW) if r["id"] == agent_id)


def _live(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in LIVE_FIELDS}


@pytest.mark.x11
def test_node_a_lists_node_bs_agent_with_its_live_details(tmp_path: Path, pg_url: str) -> None:
    xserver = start_xserver(tmp_path)
    try:
        with staffed_broker(tmp_path, broker_args=RELAY, store=pg_url) as fleet:
            b = fleet.brokers[0]
            a = _node(fleet, b, pg_url, "node-a")
            agent = fleet.agent()
            assert agent.enroll(b.token()).returncode == 0
            env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
            agent.start("--reconnect-cap", "2", "--prompt", "none", env={**env, **xserver.env()})
            wait_for(lambda: online(b, agent.agent_id), 20, "the agent online on B")
            on_b = _live(_row(b, agent.agent_id))
            # What the agent said to B: a signed-in user, the X screen and its monitor.
            assert on_b["signed_in"] and on_b["screen"] == "x11", on_b
            assert len(on_b["monitors"]) == 1 and on_b["monitors"][0]["width"] > 0, on_b
            listed = wait_for(
                lambda: (row := _row(a, agent.agent_id))["online"] and row,
                10,
                "node A to list the agent online",
            )
            assert listed["node"] == (b.data / "node.id").read_text().strip()
            found = wait_for(
                lambda: (live := _live(_row(a, agent.agent_id))) == on_b and live,
                10,
                "node A to list the agent's live details as B does",
            )
            assert found == on_b
            # Gone from B: A lists it offline, without B's details.
            agent.stop()
            gone = wait_for(
                lambda: not (row := _row(a, agent.agent_id))["online"] and row,
                20,
                "node A to list the agent offline",
            )
            assert gone["signed_in"] is None and gone["monitors"] == [], gone
    finally:
        xserver.close()
