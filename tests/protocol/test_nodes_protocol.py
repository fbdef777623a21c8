"""``nodes.list`` (broker → agent, the other broker nodes) and Hello ``nodes``:
round trips, and every forged, oversized or malformed list refused (no sockets)."""

from __future__ import annotations

import json

import pytest

from allowhelp.protocol.control import MAX_LINE, Hello, NodesList, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.nodes import MAX_NODES, AddressError, tunnel_address, tunnel_url

GOOD = NodesList(
    tunnels=("localhost:8022", "10.0.0.12:8022", "[2001:db8::1]:22", "help-2.example.org:443"),
    urls=("wss://localhost:8443/api/v1/tunnel", "wss://[2001:db8::1]/api/v1/tunnel"),
)


def line(**fields: object) -> bytes:
    return json.dumps({"type": "nodes.list", **fields}).encode()


def test_a_nodes_list_round_trips() -> None:
    assert decode(GOOD.encode()) == GOOD
    assert decode(line()) == NodesList((), ())  # an empty list: no other node
    # A repeated address counts once; fields a newer broker adds are ignored.
    assert decode(line(tunnels=["a:1", "a:1"], extra="x")) == NodesList(("a:1",), ())


def test_hello_says_nodes_and_defaults_to_no() -> None:
    old = json.dumps({"type": "hello", "hostname": "pc", "os": "x", "user": "u", "version": "1"})
    hello = decode(old.encode())
    assert isinstance(hello, Hello) and hello.nodes is False  # an older agent: none sent
    said = decode(Hello("pc", "x", "u", "1", nodes=True).encode())
    assert isinstance(said, Hello) and said.nodes is True
    with pytest.raises(ProtocolError, match="nodes must be true or false"):
        decode(json.dumps({**json.loads(old), "nodes": "yes"}).encode())


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tunnels": "localhost:22"}, "tunnels must be a list"),
        ({"urls": {"a": 1}}, "urls must be a list"),
        ({"tunnels": [["localhost:22"]]}, "something other than text"),
        ({"tunnels": [22]}, "something other than text"),
        ({"tunnels": ["localhost"]}, "host:port"),
        ({"tunnels": ["localhost:0"]}, "port must be 1 to 65535"),
        ({"tunnels": ["localhost:65536"]}, "port must be 1 to 65535"),
        ({"tunnels": ["localhost:+22"]}, "port must be 1 to 65535"),
        ({"tunnels": ["::1:22"]}, "brackets"),
        ({"tunnels": ["[nothost]:22"]}, "IPv6"),
        ({"tunnels": ["evil host:22"]}, "not a host name"),
        ({"tunnels": ["evil\nhost:22"]}, "not a host name"),
        ({"tunnels": ["user@host:22"]}, "not a host name"),
        ({"tunnels": ["a" * 400 + ":22"]}, "3 to 300"),
        ({"tunnels": [f"h{i}:22" for i in range(MAX_NODES + 1)]}, "more than 16"),
        ({"urls": ["https://localhost/api/v1/tunnel"]}, "starts with wss://"),
        ({"urls": ["ws://localhost/api/v1/tunnel"]}, "starts with wss://"),
        ({"urls": ["wss://user:pw@localhost/t"]}, "no user, query or fragment"),
        ({"urls": ["wss://localhost/t?x=1"]}, "no user, query or fragment"),
        ({"urls": ["wss://localhost:0/t"]}, "port must be"),
        ({"urls": ["wss://localhost:99999/t"]}, "not a URL"),
        ({"urls": ["wss://localhost/t t"]}, "printable"),
        ({"urls": ["wss://local\u202ehost/t"]}, "printable"),
        ({"urls": ["wss:///t"]}, "not a host name"),
        ({"urls": ["wss://localhost/%2e%2e"]}, "plain path"),
    ],
)
def test_a_bad_nodes_list_is_refused(fields: dict[str, object], said: str) -> None:
    with pytest.raises(ProtocolError, match=r"nodes\.list refused|must be a list") as caught:
        decode(line(**fields))
    assert said in str(caught.value)


def test_an_oversized_or_deep_nodes_list_is_refused_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="too long"):
        decode(line(tunnels=["h:1"] * (MAX_LINE // 6)))
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode(line(tunnels=[[[[["h:1"]]]]]))


def test_the_address_checks_return_what_sockets_take() -> None:
    assert tunnel_address("[2001:db8::1]:22") == ("2001:db8::1", 22)
    assert tunnel_address("localhost:8022") == ("localhost", 8022)
    assert tunnel_url("wss://h:8443/api/v1/tunnel") == "wss://h:8443/api/v1/tunnel"
    with pytest.raises(AddressError):
        tunnel_url("wss://h:8443/api/v1/tunnel#x")
