"""The store's queries for routing between nodes (#21): each one has a caller.

A query nobody calls is dead weight a reader must still check for holes (it reads
``broker_nodes`` and ``node_peers``, which decide where a technician's cookie goes).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import allowhelp
from allowhelp.broker.store.node_peers import NodePeerStore

SOURCE = Path(allowhelp.__file__).parent


def test_every_node_peer_query_is_used() -> None:
    own = Path(inspect.getfile(NodePeerStore)).resolve()
    code = "\n".join(path.read_text() for path in SOURCE.rglob("*.py") if path.resolve() != own)
    queries = [
        name
        for name, member in vars(NodePeerStore).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]
    assert "session_peer" in queries and "agent_peer" in queries  # the check sees them
    unused = [name for name in queries if re.search(rf"\bStore\.{name}\b", code) is None]
    assert unused == [], f"store queries nobody calls: {unused}"
