"""One check of a node list (``protocol/nodes.py`` ``checked_nodes``) for all three
places one arrives: ``nodes.list`` on the control channel, the enrolment answer and
the agent's own ``nodes.json``. Each bad list is refused by all three, for the same
reason, and a good one is taken alike (real files, no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allowhelp.agent.peers import NODES_FILE, KnownNodes
from allowhelp.protocol.control import NodesList, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.nodes import AddressError, checked_nodes

GOOD = {"tunnels": ["node-1.example.org:8022", "[2001:db8::2]:22"], "urls": ["wss://n/t"]}
BAD = [
    ({"tunnels": "node:22"}, "tunnels must be a list"),
    ({"urls": ["https://n/t"]}, "starts with wss://"),
    ({"tunnels": ["ok:22", "user@host:22"]}, "not a host name"),
    ({"tunnels": ["ok:22"], "urls": [7]}, "something other than text"),
]


def _kept(folder: Path, raw: object) -> KnownNodes:
    (folder / NODES_FILE).write_text(json.dumps(raw))
    return KnownNodes(folder)


def _enrolled(folder: Path, answer: object) -> KnownNodes:
    known = KnownNodes(folder)
    known.enrolled_with(answer)
    return known


def test_a_good_list_is_taken_alike_by_all_three(tmp_path: Path) -> None:
    want = (tuple(GOOD["tunnels"]), tuple(GOOD["urls"]))
    assert checked_nodes(GOOD) == want
    message = decode(json.dumps({"type": "nodes.list", **GOOD}).encode())
    assert message == NodesList(*want)
    kept = _kept(tmp_path, GOOD)
    assert (kept.tunnels, kept.urls) == want
    (tmp_path / NODES_FILE).unlink()
    answered = _enrolled(tmp_path, GOOD)
    assert (answered.tunnels, answered.urls) == want
    assert checked_nodes({}) == ((), ())  # nothing listed: no other node


@pytest.mark.parametrize(("raw", "said"), BAD)
def test_a_bad_list_is_refused_by_all_three_for_one_reason(
    tmp_path: Path, raw: dict[str, object], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AddressError, match=said):
        checked_nodes(raw)
    with pytest.raises(ProtocolError, match=said):
        decode(json.dumps({"type": "nodes.list", **raw}).encode())
    kept = _kept(tmp_path, raw)
    assert (kept.tunnels, kept.urls) == ((), ())
    (tmp_path / NODES_FILE).unlink()
    answered = _enrolled(tmp_path, raw)
    assert (answered.tunnels, answered.urls) == ((), ())
    assert not (tmp_path / NODES_FILE).exists()  # nothing learned, nothing kept
    assert sum(said in record.getMessage() for record in caplog.records) == 2


@pytest.mark.parametrize("raw", [["node:22"], "node:22", 22])
def test_a_list_that_is_no_object_is_refused(tmp_path: Path, raw: object) -> None:
    with pytest.raises(AddressError, match="not a JSON object"):
        checked_nodes(raw)
    kept = _kept(tmp_path, raw)
    assert (kept.tunnels, kept.urls) == ((), ())
    (tmp_path / NODES_FILE).unlink()
    answered = _enrolled(tmp_path, raw)
    assert (answered.tunnels, answered.urls) == ((), ())
