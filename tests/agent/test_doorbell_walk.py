"""The nodes the doorbell rings from (``agent/doorbellnodes.py``): the enrolled broker,
then the listed nodes in this agent's own order (the tunnel's, ``peers.spread``); the
one that worked last first; back to one ahead of it now and then. On real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from allowhelp.agent import doorbellnodes
from allowhelp.agent.doorbellnodes import NodeWalk, https_origin, spread

ENROLLED = "https://broker-b.example.invalid:8443"
URLS = [f"wss://node-{n}.example.invalid:8443/api/v1/tunnel" for n in "abc"]
AGENT = "a-doorbell-nodes"


def walk(folder: Path, nodes: object) -> NodeWalk:
    (folder / "nodes.json").write_text(json.dumps(nodes))
    return NodeWalk(folder, ENROLLED, AGENT)


def test_the_enrolled_broker_first_then_the_listed_nodes_in_the_agent_s_order(
    tmp_path: Path,
) -> None:
    listed = [*URLS, "wss://broker-b.example.invalid:8443/api/v1/tunnel"]  # itself: once
    nodes = walk(tmp_path, {"tunnels": [], "urls": listed})
    mine = [https_origin(url) for url in spread(tuple(URLS), AGENT)]
    assert nodes.nodes() == [ENROLLED, *mine]
    assert nodes.order() == [ENROLLED, *mine] and nodes.ahead() == []
    nodes.stood(mine[1], time.monotonic())  # failed over to the agent's second choice
    assert nodes.order()[0] == mine[1]
    assert nodes.ahead() == [ENROLLED, mine[0]]  # where it moves back to


def test_moving_back_is_tried_now_and_then_only(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text(json.dumps({"urls": URLS}))
    nodes = NodeWalk(tmp_path, ENROLLED, AGENT, reconnect_cap=10.0)  # calm: 50 to 150 s
    other = nodes.nodes()[1]
    now = time.monotonic()
    nodes.stood(other, now)
    assert nodes.return_due(now + 49) == []
    assert nodes.return_due(now + 151) == [ENROLLED]
    assert nodes.return_due(now + 152) == []  # not again until another while
    nodes.stood(ENROLLED, now)
    assert nodes.return_due(now + 1000) == []  # home: nowhere to move back to


def test_the_calm_is_the_tunnel_s() -> None:
    from allowhelp.agent import tunnel  # the full agent's (asyncssh): here only

    assert doorbellnodes.RETURN_EVERY == tunnel.RETURN_EVERY


@pytest.mark.parametrize(
    "damaged",
    [
        "not json",
        json.dumps({"urls": ["https://not-a-tunnel-url.invalid/"]}),
        json.dumps({"urls": ["wss://x.invalid/a b"]}),
        json.dumps(["wss://x.invalid/"]),
    ],
)
def test_a_damaged_list_counts_as_no_other_node(
    tmp_path: Path, damaged: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "nodes.json").write_text(damaged)
    assert NodeWalk(tmp_path, ENROLLED, AGENT).nodes() == [ENROLLED]
    assert "no other broker nodes known" in caplog.text


def test_no_list_is_the_enrolled_broker_alone(tmp_path: Path) -> None:
    assert NodeWalk(tmp_path, ENROLLED + "/", AGENT).order() == [ENROLLED]
