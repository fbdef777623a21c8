"""The agent's list of broker nodes (``agent/peers.py``) and the broker side that
sends it (``node/peers.py``): kept 0600, checked on load, deny by default; the
enrolled broker first; only the routes the PC was enrolled with; older agents
are sent nothing. Pure logic on real files; the failover itself, with real
nodes, is in tests/multinode/test_failover.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.peers import NODES_FILE, Endpoint, KnownNodes, ahead_of, spread
from allowhelp.agent.service import AgentService
from allowhelp.broker.node.peers import NodeAnnouncer, nodes_list
from allowhelp.broker.store.nodes import NodeRecord
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.link import AgentLink
from allowhelp.protocol.control import Message, NodesList

ENROLLED = AgentConfig(
    "https://help.example.org",
    "pem",
    "fp",
    "help.example.org",
    8022,
    "key",
    "a-1",
    "ACME IT",
    tunnel_url="wss://help.example.org/api/v1/tunnel",
)
LIST = NodesList(
    ("node-1.example.org:8022", "help.example.org:8022", "[2001:db8::2]:8022"),
    ("wss://node-1.example.org/api/v1/tunnel",),
)


def test_a_learned_list_is_kept_owner_only_and_read_back(tmp_path: Path) -> None:
    nodes = KnownNodes(tmp_path)
    assert nodes.learned(LIST) is True
    assert nodes.learned(LIST) is False  # the same list again: nothing written
    path = tmp_path / NODES_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    again = KnownNodes(tmp_path)
    assert (again.tunnels, again.urls) == (LIST.tunnels, LIST.urls)
    assert [p.name for p in tmp_path.iterdir()] == [NODES_FILE]  # no temporary file left


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"tunnels": ["evil host:22"]}),
        json.dumps({"tunnels": ["ok:22"], "urls": ["https://elsewhere/"]}),
        json.dumps({"tunnels": [f"h{i}:1" for i in range(17)]}),
        json.dumps({"tunnels": "ok:22"}),
    ],
)
def test_a_damaged_or_edited_file_means_no_other_node(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / NODES_FILE).write_text(text)
    with caplog.at_level(logging.WARNING):
        nodes = KnownNodes(tmp_path)
    assert (nodes.tunnels, nodes.urls) == ((), ())
    assert "no other broker nodes known" in caplog.text
    assert nodes.endpoints(ENROLLED) == [
        Endpoint("ssh", host="help.example.org", port=8022),
        Endpoint("https", url=ENROLLED.tunnel_url),
    ]


def test_the_enrolled_broker_comes_first_then_the_nodes_once_each(tmp_path: Path) -> None:
    nodes = KnownNodes(tmp_path)
    nodes.learned(LIST)
    found = [str(e) for e in nodes.endpoints(ENROLLED)]
    assert found[:2] == ["help.example.org:8022", ENROLLED.tunnel_url]
    others = ["node-1.example.org:8022", "[2001:db8::2]:8022"]
    assert found[2:4] == sorted(others, key=lambda a: list(spread(LIST.tunnels, "a-1")).index(a))
    assert found[4:] == ["wss://node-1.example.org/api/v1/tunnel"]


def test_each_agent_orders_the_nodes_its_own_way_and_keeps_it() -> None:
    nodes = ("n1:8022", "n2:8022", "n3:8022")
    orders = {spread(nodes, f"agent-{n}") for n in range(60)}
    assert len(orders) == 6  # every order of three is some agent's
    assert spread(nodes, "agent-7") == spread(tuple(reversed(nodes)), "agent-7")  # stable


def test_a_dead_nodes_agents_spread_evenly_over_the_others() -> None:
    nodes = ("n1:8022", "n2:8022", "n3:8022", "n4:8022")
    agents = [f"agent-{n}" for n in range(4000)]
    on_n1 = [a for a in agents if spread(nodes, a)[0] == "n1:8022"]
    assert 800 < len(on_n1) < 1200  # a quarter each while all four live
    landed = {node: 0 for node in nodes[1:]}
    for agent in on_n1:  # n1 dies: each of its agents takes its next node
        landed[spread(nodes, agent)[1]] += 1
    assert all(0.25 < count / len(on_n1) < 0.42 for count in landed.values()), landed
    # The others' agents do not move: their first node is the same without n1.
    for agent in agents[:400]:
        if agent not in on_n1:
            assert spread(nodes[1:], agent)[0] == spread(nodes, agent)[0]


def test_a_pc_fails_over_only_by_the_routes_it_was_enrolled_with(tmp_path: Path) -> None:
    nodes = KnownNodes(tmp_path)
    nodes.learned(LIST)
    https_only = AgentConfig(**{**ENROLLED.__dict__, "tunnel_host": "", "tunnel_port": 0})
    assert {e.route for e in nodes.endpoints(https_only)} == {"https"}
    ssh_only = AgentConfig(**{**ENROLLED.__dict__, "tunnel_url": ""})
    assert {e.route for e in nodes.endpoints(ssh_only)} == {"ssh"}
    assert len(nodes.endpoints(ssh_only)) == 3


def test_the_service_takes_the_list_from_the_control_channel(tmp_path: Path) -> None:
    service = AgentService(ENROLLED)
    service.on_message(LIST)  # no list kept (no tunnel yet): ignored, no error
    service.nodes = KnownNodes(tmp_path)
    service.on_message(LIST)
    assert service.nodes.tunnels == LIST.tunnels


@dataclass
class _Link:
    """What the announcer uses of a link: ``send`` (records) and ``close``."""

    sent: list[Message] = field(default_factory=list)

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def _node(node_id: str, tunnel: str, https: str, age: float = 1.0) -> NodeRecord:
    return NodeRecord(node_id, "h", 1, https, tunnel, 0.0, 0.0, age)


NODES = [
    _node("a", "node-a.example.org:8022", "https://node-a.example.org"),
    _node("b", "off", "https://node-b.example.org:8443"),
    _node("c", "node-c.example.org:8022", "https://node-c.example.org", age=31.0),  # dead
]


def test_the_list_holds_the_live_nodes_usable_addresses() -> None:
    assert nodes_list(NODES) == NodesList(
        ("node-a.example.org:8022",),
        (
            "wss://node-a.example.org/api/v1/tunnel",
            "wss://node-b.example.org:8443/api/v1/tunnel",
        ),
    )


def test_only_agents_that_said_nodes_get_the_list_and_its_changes() -> None:
    registry = AgentRegistry()
    announcer = NodeAnnouncer(registry)
    announcer.update(NODES)
    old, new = _Link(), _Link()
    for agent_id, link in (("a-old", old), ("a-new", new)):
        registry.attach(agent_id, cast(AgentLink, link), "peer")
    live = registry.get("a-new")
    assert live is not None
    live.nodes = True  # its Hello said so
    registry.changed("a-new")
    registry.changed("a-old")
    registry.changed("a-new")  # a hello again: the same list is not sent twice
    assert new.sent == [nodes_list(NODES)] and old.sent == []
    announcer.update(NODES[:1])  # node b left
    assert new.sent[-1] == nodes_list(NODES[:1]) and len(new.sent) == 2 and old.sent == []


def test_the_enrolment_answers_nodes_are_kept_checked_like_the_control_channels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = KnownNodes(tmp_path)
    nodes.enrolled_with({"tunnels": list(LIST.tunnels), "urls": list(LIST.urls)})
    again = KnownNodes(tmp_path)
    assert (again.tunnels, again.urls) == (LIST.tunnels, LIST.urls)
    assert (tmp_path / NODES_FILE).stat().st_mode & 0o777 == 0o600
    with caplog.at_level(logging.WARNING):
        again.enrolled_with({"tunnels": ["evil host:22"], "urls": []})  # hostile: ignored
    assert "ignored the broker nodes in the enrolment answer" in caplog.text
    assert (KnownNodes(tmp_path).tunnels, KnownNodes(tmp_path).urls) == ((), ())
    again.enrolled_with({"tunnels": list(LIST.tunnels)})
    again.enrolled_with(None)  # a broker alone lists none: nothing left of an earlier list
    assert KnownNodes(tmp_path).tunnels == ()
    again.enrolled_with(["not", "an", "object"])
    assert KnownNodes(tmp_path).tunnels == ()


def test_an_agent_moves_back_only_from_another_node_to_the_ways_ahead(tmp_path: Path) -> None:
    """``ahead_of`` (agent/tunnel.py moves back by it): from a node it failed over to,
    the ways this agent puts first; from its enrolled broker, by either route, none."""
    nodes = KnownNodes(tmp_path)
    nodes.learned(LIST)
    endpoints = nodes.endpoints(ENROLLED)
    enrolled_ssh, enrolled_https = endpoints[0], endpoints[1]
    assert ahead_of(enrolled_ssh, endpoints, ENROLLED) == []
    assert ahead_of(enrolled_https, endpoints, ENROLLED) == []  # the raw port blocked here
    assert ahead_of(None, endpoints, ENROLLED) == []
    last = endpoints[-1]
    assert ahead_of(last, endpoints, ENROLLED) == endpoints[:-1]
    second = endpoints[2]
    assert ahead_of(second, endpoints, ENROLLED) == [enrolled_ssh, enrolled_https]
    gone = Endpoint("ssh", host="gone.example.org", port=22)  # no longer listed: stays
    assert ahead_of(gone, endpoints, ENROLLED) == []
